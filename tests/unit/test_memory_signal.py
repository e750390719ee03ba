"""Where the memory runway's samples come from as deployed (issue #15): Docker stats stay on beside
Prometheus, and the Prometheus source leaves them the memory series, so one detector never reads
one container's memory twice from two sources."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.unit.engine.test_attribution import _Inventory
from watcher.cli import app
from watcher.clock import ManualClock
from watcher.config import SHIPPED_CONFIG, load_settings
from watcher.live import LiveConfig, LiveWatcher
from watcher.rulepack.compile import load_packs
from watcher.rules import SHIPPED_RULES
from watcher.sources.docker_stats import DockerStatsSource
from watcher.store import Store

MEMORY = {"memory_working_set_bytes", "memory_limit_bytes"}


def test_the_shipped_settings_keep_docker_stats_on_when_prometheus_is_configured() -> None:
    settings = load_settings(SHIPPED_CONFIG, {"prometheus_url": "http://127.0.0.1:9090"})
    assert settings.effective_stats_interval_s == 5
    assert load_settings(SHIPPED_CONFIG, {"stats_interval_s": 0}).effective_stats_interval_s is None


def _live(tmp_path: Path, stats: float | None, engines: tuple[str, ...] = ("local",)) -> LiveWatcher:
    inventory = _Inventory([])
    inventory.engine_names = engines  # type: ignore[assignment]
    return LiveWatcher(
        LiveConfig(stats_interval_s=stats, prometheus_url="http://127.0.0.1:9"),
        load_packs([SHIPPED_RULES]),
        Store(tmp_path / "w.db"),
        clock=ManualClock(1000.0),
        inventory=inventory,  # type: ignore[arg-type]
    )


def test_with_docker_stats_prometheus_leaves_them_the_memory_series_also_after_a_reload(tmp_path: Path) -> None:
    live = _live(tmp_path, stats=5.0)
    assert live.prometheus is not None
    assert any(isinstance(s, DockerStatsSource) for s in live.sources)
    ids = {q.id for q in live.prometheus.queries}
    assert not ids & MEMORY and {"error_ratio", "latency_p99_seconds"} <= ids
    live.request_reload(load_packs([SHIPPED_RULES]))
    live._swap_engine(live._reload)  # type: ignore[arg-type]
    assert not {q.id for q in live.prometheus.queries} & MEMORY
    live.store.close()


def test_without_docker_stats_or_without_docker_memory_comes_from_prometheus(tmp_path: Path) -> None:
    for stats, engines in ((None, ("local",)), (5.0, ())):  # stats off; Kubernetes (``engines: {}``)
        live = _live(tmp_path / f"{stats}-{len(engines)}", stats, engines)
        assert live.prometheus is not None
        assert not any(isinstance(s, DockerStatsSource) for s in live.sources)
        assert {q.id for q in live.prometheus.queries} >= MEMORY
        live.store.close()


def test_findings_command_lists_what_was_raised_and_resolved(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    store = Store(db)
    store.record_finding(100.0, "local/tfs-1", "memory-runway", "oom", False, {"eta_s": 42.0})
    store.record_finding(130.0, "local/tfs-1", "memory-runway", "oom", True, {"eta_s": None})
    store.record_finding(140.0, "local/tfs-2", "http-500-burst", "error", False, {})
    store.close()
    runner = CliRunner()
    text = runner.invoke(app, ["findings", "--store", str(db)])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].endswith("local/tfs-1 oom (memory-runway) raised eta 42s") and "resolved" in lines[1]
    rows = json.loads(runner.invoke(app, ["findings", "--store", str(db), "--json", "--target", "local/tfs-1"]).stdout)
    assert [(r["ts"], r["resolved"]) for r in rows] == [(100.0, False), (130.0, True)]
    missing = runner.invoke(app, ["findings", "--store", str(tmp_path / "nope.db")])
    assert missing.exit_code == 2 and "no store at" in missing.output
