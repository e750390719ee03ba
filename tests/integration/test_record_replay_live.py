"""`watcher record` of a testbed run, replayed, gives the findings the live watcher gave (issue #19).

The real `watcher run` (dry-run, so nothing it does changes what the replicas do) watches two
replicas under load, scraped by the testbed's real Prometheus every second. Replica 0 leaks to a
real OOM kill (Docker's oom/die events, the simulator's allocator warnings in its logs), replica 1
answers 60 % errors (a PromQL rule on the scraped request counters). Then `watcher record` writes
the run's stretch from Docker's API and Prometheus' range queries, and `watcher replay` of that file
with the same packs must give the same (rule, target) findings, as many times each.

The run ends with a quiet tail (load stopped, faults cleared) before ``until``, so no finding is
in flight at the cut and the comparison needs no time window beyond the run itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from testbed.loadgen import LoadGenerator
from testbed.replicas import Replica
from testbed.stack import Testbed, TestbedConfig
from tests.integration.running import Running, wait_for
from watcher.rules import SHIPPED_RULES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# Replica error ratio from the scraped counters, over a window of 5 scrapes (scrape interval 1 s).
ERRORS_PACK = """pack: record-test
rules:
  - id: replica-error-ratio
    description: More than 20 % of the replica's requests fail.
    promql: >-
      sum by (replica) (rate({__name__=":tensorflow:serving:request_count", status!="OK"}[5s]))
      / sum by (replica) (rate({__name__=":tensorflow:serving:request_count"}[5s]))
    threshold: {above: 0.2}
    for: 2s
    predicts: unhealthy
"""


def firing(findings: list[dict[str, object]]) -> Counter[tuple[str, str]]:
    return Counter((str(f["rule"]), str(f["target"])) for f in findings if not f.get("resolved"))


def test_recorded_run_replays_to_the_live_findings(tmp_path: Path) -> None:
    since = time.time() - 1  # before the replicas exist: the live watcher reads their logs from the start
    cfg = TestbedConfig(replicas=2, weights=(1, 1), memory_limit="160m", health_interval_s=2.0)
    with Testbed(cfg) as bed:
        assert bed.prometheus is not None
        packs = tmp_path / "packs"
        packs.mkdir()
        for name in ("tfserving", "docker"):
            shutil.copy(SHIPPED_RULES / f"{name}.yaml", packs)
        (packs / "errors.yaml").write_text(ERRORS_PACK)
        env = {
            "WATCHER_PROMETHEUS_URL": bed.prometheus.url,
            "WATCHER_PROMETHEUS_INTERVAL_S": "1",
            "WATCHER_LOG_FILES": "{}",  # host files are not recorded (and the Nginx log only adds noise)
            "WATCHER_ACTIONS_ENABLED": "false",
        }
        w = Running(bed, tmp_path, **env)
        gen = None
        try:
            gen = LoadGenerator(bed.url, "half_plus_two", 20, 60, 5.0, [1.0]).start()
            time.sleep(6)  # healthy baseline, the error ratio's window full
            leaky, failing = bed.replicas
            leaky.set_faults({"leak": {"mb_per_s": 16}})
            failing.set_faults({"error_ramp": {"start": 0.6, "end": 0.6, "over_s": 0}})

            def live() -> Counter[tuple[str, str]]:
                return firing([line for line in w.logs() if line.get("msg") == "finding"])

            wait_for(
                lambda: {r for r, _ in live()} >= {"docker-oom-event", "replica-error-ratio"},
                45,
                "the OOM kill and the error ratio found live",
            )
            gen.stop()
            gen.result()
            failing.clear_faults()
            wait_for(lambda: _clear(leaky), 20, "the leaky replica back and healthy")
            time.sleep(8)  # quiet tail: nothing in flight when the stretch ends
            until = time.time()
            time.sleep(1.5)
        finally:
            if gen is not None:
                gen.stop()
            w.stop()
        live_findings = [line for line in w.logs() if line.get("msg") == "finding" and line["ts"] <= until]

        out = tmp_path / "run.jsonl.gz"
        run_env = {**w.env, "PYTHONPATH": str(REPO)}  # the same settings as the live watcher
        more = ["--out", str(out)]
        rec = subprocess.run(
            [
                sys.executable,
                "-m",
                "watcher.cli",
                "record",
                "--since",
                f"{since:.3f}",
                "--until",
                f"{until:.3f}",
                *more,
            ],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert rec.returncode == 0, rec.stderr
    assert "2 containers" in rec.stderr and "1 failures" in rec.stderr, rec.stderr  # the OOM kill, once
    replayed = subprocess.run(
        [sys.executable, "-m", "watcher.cli", "replay", str(out), "--pack", str(packs)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert replayed.returncode == 0, replayed.stderr
    replay_findings = [json.loads(line) for line in replayed.stdout.splitlines() if line.startswith("{")]
    expected = firing(live_findings)
    assert {r for r, _ in expected} >= {"docker-oom-event", "replica-error-ratio"}
    assert firing(replay_findings) == expected, (replay_findings, live_findings)


def _clear(replica: Replica) -> bool:
    """The leak cleared, once the restarted replica answers its admin API again."""
    try:
        replica.clear_faults()
    except requests.RequestException:
        return False
    return True
