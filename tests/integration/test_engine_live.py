"""The engine on the live testbed: findings come before failures, and name the right replica."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from testbed.events import EventRecorder
from testbed.loadgen import LoadGenerator
from testbed.stack import Testbed, TestbedConfig
from watcher.live import LiveConfig, LiveWatcher
from watcher.model import Predicts, Sample, Target
from watcher.rulepack.compile import load_packs
from watcher.rules import SHIPPED_RULES
from watcher.sources.file_logs import FileSpec
from watcher.store import Store

pytestmark = pytest.mark.integration

RULES = SHIPPED_RULES


@pytest.fixture
def bed(docker_client: docker.DockerClient) -> Iterator[Testbed]:
    cfg = TestbedConfig(replicas=3, weights=(3, 2, 1), memory_limit="160m", with_alertmanager=False)
    with Testbed(cfg) as bed:
        yield bed


@pytest.fixture
def watcher(bed: Testbed, tmp_path: Path) -> Iterator[LiveWatcher]:
    assert bed.nginx is not None
    config = LiveConfig(
        label_selector=(f"serving-testbed={bed.run_id}",),
        stats_interval_s=None,
        files=[
            FileSpec(bed.nginx.access_log_path, Target("nginx"), load_balancer=True),
            FileSpec(bed.nginx.error_log_path, Target("nginx"), load_balancer=True),
        ],
        rescan_s=1.0,
    )
    live = LiveWatcher(config, load_packs([RULES]), Store(tmp_path / "watcher.db"))
    with live:
        yield live


def test_leak_gives_an_oom_finding_before_the_kill(bed: Testbed, watcher: LiveWatcher) -> None:
    sick = bed.replicas[1]
    events = EventRecorder(bed.client, bed.run_id).start()
    try:
        sick.set_faults({"leak": {"mb_per_s": 12}})
        oom = events.wait_for(sick.name, "oom", timeout_s=60)
    finally:
        events.stop()
    first = watcher.wait_for(lambda f: f.predicts is Predicts.OOM and f.target.container == sick.name, 10)
    assert first.ts < oom.ts, f"finding at {first.ts}, OOM kill at {oom.ts}"
    assert first.rule_id.startswith("tfs-"), first.rule_id  # from the logs, not from Docker's oom event
    lead = oom.ts - first.ts
    print(f"lead time before the OOM kill: {lead:.1f}s ({first.rule_id})")
    assert lead > 1.0
    others = {f.target.container for f in watcher.findings if not f.resolved}
    assert others == {sick.name}


def test_failed_load_and_5xx_burst_are_attributed_to_their_replicas(bed: Testbed, watcher: LiveWatcher) -> None:
    r0, r1, _r2 = bed.replicas
    r1.set_faults({"fail_load": {"min_version": 3}})
    bed.publish_version(3)
    load = watcher.wait_for(lambda f: f.predicts is Predicts.LOAD_FAILURE, 30)
    assert load.target.container == r1.name

    r0.set_faults({"error_ramp": {"start": 1.0, "end": 1.0, "over_s": 1}})
    http = requests.Session()
    http.trust_env = False
    statuses = [
        http.post(f"{bed.url}/v1/models/half_plus_two:predict", data=json.dumps({"instances": [1.0]}), timeout=5)
        for _ in range(30)
    ]
    assert sum(r.status_code == 500 for r in statuses) >= 10
    via_nginx = watcher.wait_for(lambda f: f.rule_id == "nginx-json-upstream-5xx", 20)
    assert via_nginx.target.container == r0.name  # Nginx's line, attributed to the replica behind it
    own = watcher.wait_for(lambda f: f.predicts is Predicts.HTTP_5XX and f.rule_id.startswith("tfs-"), 10)
    assert own.target.container == r0.name
    time.sleep(1)
    firing = {(f.predicts, f.target.container) for f in watcher.findings if not f.resolved}
    assert firing <= {
        (Predicts.LOAD_FAILURE, r1.name),
        (Predicts.HTTP_5XX, r0.name),
    }, firing


def test_prometheus_series_flag_the_slow_replica_as_a_member_of_its_service(bed: Testbed, tmp_path: Path) -> None:
    """The foresight pack's series come from the testbed's real Prometheus (TF Serving's own latency
    histogram and request counters); a replica that turns slow is the one flagged, as a replica of
    its service (what peer comparison and the capacity rails need), before any request times out."""
    assert bed.prometheus is not None
    config = LiveConfig(
        label_selector=(f"serving-testbed={bed.run_id}",),
        stats_interval_s=None,
        prometheus_url=bed.prometheus.url,
        prometheus_interval_s=1.0,
        prometheus_window="10s",
        rescan_s=1.0,
        backfill_s=0,
    )
    slow = bed.replicas[2]
    seen: list[Sample] = []
    load = LoadGenerator(bed.url, "half_plus_two", rate_per_s=15, duration_s=60, timeout_s=5, instances=[1.0])
    with LiveWatcher(config, load_packs([RULES / "foresight.yaml"]), Store(tmp_path / "w.db")) as live:
        original = live.engine.feed_batch

        def spy(signals: list[Any]) -> list[Any]:
            seen.extend(s for s in signals if isinstance(s, Sample))
            return original(signals)

        live.engine.feed_batch = spy  # type: ignore[method-assign]
        load.start()
        try:
            time.sleep(15)  # every replica has a latency and error history
            slow.set_faults({"latency_creep": {"start_ms": 400, "end_ms": 400, "over_s": 1}})
            flagged = live.wait_for(lambda f: f.predicts is Predicts.LATENCY and not f.resolved, 40)
        finally:
            load.stop()
    assert flagged.target.container == slow.name
    assert flagged.target.service == "half_plus_two"
    assert {f.target.container for f in live.findings if not f.resolved} == {slow.name}
    names = {s.series for s in seen}
    assert {"error_ratio", "latency_p99_seconds"} <= names, names
    ratios = [s.value for s in seen if s.series == "error_ratio"]
    assert ratios and max(ratios) == 0.0  # no request failed on the server's side
    assert {s.target.service for s in seen if s.target is not None} == {"half_plus_two"}
    assert load.result(5).failed == 0


def test_a_hung_replica_is_found_by_its_probes_within_1_5_s(bed: Testbed, watcher: LiveWatcher) -> None:
    """Issue #17: the process stays up and logs nothing; its own status call stops answering. The
    shipped probes (0.5 s period, 0.4 s timeout, two failures in a row) find it before the proxy's
    3 s timeout has failed a client, and only it."""
    sick = bed.replicas[1]
    time.sleep(3.0)  # the inventory has listed the replicas and each has answered a probe
    hung_at = time.time()
    sick.set_faults({"hang": {}})
    found = watcher.wait_for(lambda f: f.rule_id == "probe-unanswered" and not f.resolved, 10)
    assert found.target.container == sick.name
    print(f"hang found by its probes {found.ts - hung_at:.2f}s after it started")
    assert found.ts - hung_at <= 1.5
    flagged = {f.target.container for f in watcher.findings if f.rule_id == "probe-unanswered"}
    assert flagged == {sick.name}
