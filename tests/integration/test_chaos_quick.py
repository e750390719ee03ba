"""The chaos benchmark's CI subset (``python -m benchmarks.chaos --quick``) runs end to end on the
real testbed, writes every output the issue asks for, and the watcher is not worse than nothing."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from benchmarks import chaos

pytestmark = pytest.mark.integration

KEYS = {
    "scenario",
    "strategy",
    "params",
    "requests",
    "failed",
    "failed_ratio",
    "p50_ms",
    "p99_ms",
    "restarts",
    "oom_kills",
    "actions",
    "false_actions",
    "first_finding_s",
    "lead_time_s",
    "recovery_s",
}


def test_quick_chaos_run_writes_every_key_and_the_watcher_is_not_worse_than_none(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    out = tmp_path / "chaos.json"
    assert chaos.main(["--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["scenario"], r["strategy"]) for r in rows] == [("leak-oom-8", "none"), ("leak-oom-8", "watcher")]
    for row in rows:
        assert row.keys() >= KEYS, KEYS - row.keys()
        assert row["requests"] >= 0.9 * 20 * 60, row["load"]
        assert 0.0 <= row["failed_ratio"] <= 1.0
    none, watcher = rows
    assert watcher["failed"] <= none["failed"], (none["failed_by_status"], watcher["incidents"])
    assert watcher["false_actions"] == 0, watcher["incidents"]
    # the product as users run it: its own process, the shipped file, no experiment knob
    assert watcher["watcher_as"]["command"] == "watcher run --config deploy/watcher.yaml"
    assert watcher["watcher_as"]["knobs"] == []
    table = out.with_suffix(".md").read_text()
    assert "| leak-oom-8 | tfsim | watcher |" in table
    png = tmp_path / "chaos-leak-oom-8.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
