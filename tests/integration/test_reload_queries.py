"""A reload swaps the whole rule set: a ``series:`` rule added to a running watcher is queried
against the real Prometheus (a loopback host process scraping itself) without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from testbed.ports import free_port
from testbed.services import Prometheus, ScrapeTarget
from watcher.live import LiveConfig, LiveWatcher
from watcher.rulepack import RulePackError, compile_packs
from watcher.store import Store

pytestmark = pytest.mark.integration

BEFORE = """pack: p
rules:
  - id: boom
    match: {log: boom}
    predicts: crash
"""


def test_reload_adds_a_series_rule_that_is_queried_without_restart(tmp_path: Path) -> None:
    port = free_port()
    itself = ScrapeTarget("prometheus", f"127.0.0.1:{port}", "/metrics", {})
    prom = Prometheus(tmp_path / "prom", port, targets=[itself], scrape_interval_s=0.5)
    pack = tmp_path / "p.yaml"
    pack.write_text(BEFORE)
    config = LiveConfig(
        label_selector=("watcher.test-reload=matches-nothing",),
        prometheus_url=None,
        prometheus_interval_s=0.5,
        stats_interval_s=None,
        backfill_s=None,
    )
    try:
        prom.start()
        assert prom.wait_for_series("up", 1, timeout_s=20)
        config.prometheus_url = prom.url
        with LiveWatcher(config, compile_packs([pack]), Store(tmp_path / "w.db")) as live:
            assert live.prometheus is not None and live.prometheus.queries == []
            (tmp_path / "p.yaml").write_text(
                BEFORE
                + "  - id: prom-down\n    threshold: {series: prom_up, below: 1}\n    predicts: unhealthy\n"
                + "series:\n  - {name: prom_up, promql: 'up', target_label: instance}\n"
            )
            live.request_reload(compile_packs([pack]))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (live.engine.stats.samples and "prom-down" in live.engine.rules):
                time.sleep(0.1)
            assert [q.id for q in live.prometheus.queries] == ["prom_up"]
            assert "prom-down" in live.engine.rules
            assert live.engine.stats.samples > 0  # the new query ran and its samples reached the engine
            assert live.prometheus.status()["series"] >= 1 and live.prometheus.connected

            pack.write_text(
                "pack: p\nrules:\n  - id: bad\n    match: {log: '(a|aa)*b', regex: true}\n    predicts: crash\n"
            )
            with pytest.raises(RulePackError, match=r"p.yaml:4:18: .*alternation"):
                live.request_reload(compile_packs([pack]))
            time.sleep(0.5)
            assert live.alive and "prom-down" in live.engine.rules  # the last good rule set stays
    finally:
        prom.stop()
