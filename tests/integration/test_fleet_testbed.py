"""The fleet testbed (issue #18): replicas over several Docker engines behind one Nginx upstream, and
the fleet benchmark's short variant, the watcher as users run it watching every engine."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import docker
import pytest
import requests

from benchmarks import fleet
from testbed.replicas import TESTBED_LABEL
from testbed.stack import Testbed, TestbedConfig

pytestmark = pytest.mark.integration


def test_a_testbed_over_two_engines_serves_through_one_upstream_and_leaves_nothing_behind(
    docker_client: docker.DockerClient,
) -> None:
    bed = Testbed(TestbedConfig(replicas=4, weights=(1, 1, 1, 1), engines=2, noise_lines_per_s=5)).up()
    try:
        [e1] = bed.extra_engines.values()
        label = {"label": f"{TESTBED_LABEL}={bed.run_id}"}
        assert Counter(r.spec.engine for r in bed.replicas) == {"local": 2, "e1": 2}
        on_shared = {c.name for c in docker_client.containers.list(filters=label)}
        on_e1 = {c.name for c in e1.client().containers.list(filters=label)}
        assert on_shared == {r.name for r in bed.replicas if r.spec.engine == "local"}
        assert on_e1 == {r.name for r in bed.replicas if r.spec.engine == "e1"}
        assert bed.describe()["engines"] == {"local": "/var/run/docker.sock", "e1": str(e1.socket)}

        http = requests.Session()
        http.trust_env = False
        served = Counter(
            http.post(f"{bed.url}/v1/models/half_plus_two:predict", json={"instances": [1.0]}, timeout=5).headers.get(
                "X-Upstream"
            )
            for _ in range(40)
        )
        assert set(served) == {r.address for r in bed.replicas}  # one upstream in front of both engines
        # every replica prints its noise lines (5/s), whichever engine it is on: an idle one prints none
        time.sleep(3)
        for r in bed.replicas:
            recent = r.container.logs(since=int(time.time()) - 2, until=int(time.time()))
            assert len(recent.splitlines()) >= 5, (r.name, recent)
        pid, root, workdir = e1.pid, e1.root, bed.workdir
    finally:
        bed.down()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not root.exists() and not workdir.exists()
    assert docker_client.containers.list(all=True, filters=label) == []


def test_the_fleet_benchmark_short_variant_watches_every_engine_and_drains_each_failure(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    assert fleet.main(["--quick", "--json", str(out)]) == 0
    [result] = json.loads(out.read_text())["results"]
    assert result["replicas"] == 4 and result["engines"] == 2
    assert result["dropped"] == 0
    assert result["lines_processed_per_s"] >= 0.9 * result["lines_written_per_s"], result  # it keeps up
    assert result["watcher_cpu_pct"] > 0 and result["rss_mb"] > 0
    assert result["not_drained"] == 0, result["failures"]
    failures = result["failures"]
    assert {f["target"].split("/")[0] for f in failures} == {"local", "e1"}  # one per engine
    assert all(f["latency_s"] > 0 for f in failures)  # the drain came after the line, on each engine
    assert all(f["opened_at"] <= f["drain_started_at"] <= f["drained_at"] for f in failures)
    assert result["steady_findings"] == {}, result["steady_findings"]  # a healthy fleet: no false alarm
