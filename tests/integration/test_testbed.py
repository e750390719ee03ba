"""The testbed fails the way production fleets fail, as a client and Docker see it."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any

import docker
import pytest
import requests

from testbed.events import EventRecorder
from testbed.replicas import TESTBED_LABEL
from testbed.stack import Testbed, TestbedConfig

pytestmark = pytest.mark.integration

MODEL = "half_plus_two"
V1 = {"instances": [1.0, 2.0, 5.0]}  # version 1: 0.5x + 2, version 2: 0.5x + 3 (models/half_plus_two)
EXPECTED = {"1": [2.5, 3.0, 4.5], "2": [3.5, 4.0, 5.5]}


def predict(http: requests.Session, bed: Testbed, timeout: float = 10.0) -> requests.Response:
    return http.post(f"{bed.url}/v1/models/{MODEL}:predict", data=json.dumps(V1), timeout=timeout)


def served_by(resp: requests.Response) -> str:
    return resp.headers.get("X-Upstream", "")


def replica_of(bed: Testbed, upstream_addr: str) -> int | None:
    """Index of the replica that finally answered (Nginx lists every upstream it tried)."""
    last = upstream_addr.split(",")[-1].strip()
    for i, r in enumerate(bed.replicas):
        if r.address == last:
            return i
    return None


@pytest.fixture
def bed3(docker_client: docker.DockerClient) -> Any:
    with Testbed(TestbedConfig(replicas=3, weights=(3, 2, 1))) as bed:
        yield bed


def test_nginx_spreads_by_weight_and_prometheus_has_every_replica(bed3: Testbed, http: requests.Session) -> None:
    counts: Counter[int | None] = Counter()
    for _ in range(120):
        resp = predict(http, bed3)
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"] == EXPECTED["2"]
        counts[replica_of(bed3, served_by(resp))] += 1
    # Nginx's smooth weighted round robin is exact for sequential requests: 3:2:1 of 120.
    assert counts == {0: 60, 1: 40, 2: 20}

    assert bed3.prometheus is not None
    series = bed3.prometheus.wait_for_series(
        '{__name__=":tensorflow:serving:request_count", status="OK"}', min_count=3, timeout_s=20
    )
    assert {s["metric"]["replica"] for s in series} == {r.name for r in bed3.replicas}
    loads = bed3.prometheus.wait_for_series(
        '{__name__=":tensorflow:cc:saved_model:load_attempt_count", status="success"}',
        min_count=3,
        timeout_s=20,
    )
    assert len({s["metric"]["replica"] for s in loads}) == 3
    mem = bed3.prometheus.wait_for_series("process_resident_memory_bytes", min_count=3, timeout_s=20)
    assert all(float(s["value"][1]) > 1e6 for s in mem)


def test_teardown_leaves_nothing_behind(docker_client: docker.DockerClient) -> None:
    bed = Testbed(TestbedConfig(replicas=2, weights=(1, 1), with_haproxy=True)).up()
    pids = [s.pid for s in (bed.nginx, bed.prometheus, bed.alertmanager, bed.haproxy) if s is not None]
    assert len(pids) == 4 and all(pids)
    workdir = bed.workdir
    bed.down()
    assert docker_client.containers.list(all=True, filters={"label": f"{TESTBED_LABEL}={bed.run_id}"}) == []
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not workdir.exists()


def test_leaking_replica_is_oom_killed_and_restarted(docker_client: docker.DockerClient) -> None:
    cfg = TestbedConfig(replicas=1, weights=(1,), memory_limit="128m", with_alertmanager=False)
    with Testbed(cfg) as bed:
        replica = bed.replicas[0]
        events = EventRecorder(docker_client, bed.run_id).start()
        try:
            t0 = time.time()
            replica.set_faults({"leak": {"mb_per_s": 40}})
            oom = events.wait_for(replica.name, "oom", timeout_s=30)
            die = events.wait_for(replica.name, "die", timeout_s=10, after=t0)
            assert die.attributes["exitCode"] == "137"
            events.wait_for(replica.name, "start", timeout_s=20, after=oom.ts)
        finally:
            events.stop()
        assert replica.restart_count() >= 1
        # The restart policy brought it back, and the run-time fault died with the process.
        assert replica.wait_available(timeout_s=30) == "2"
        logs = replica.logs()
        assert "exceeds 10% of free system memory" in logs
        assert "ran out of memory trying to allocate" in logs


def test_without_restart_policy_docker_reports_oomkilled(docker_client: docker.DockerClient) -> None:
    cfg = TestbedConfig(replicas=1, weights=(1,), memory_limit="96m", restart_policy="no", with_alertmanager=False)
    with Testbed(cfg) as bed:
        replica = bed.replicas[0]
        replica.set_faults({"leak": {"mb_per_s": 40}})
        deadline = time.monotonic() + 30
        while replica.state()["Running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        state = replica.state()
        assert state["OOMKilled"] is True
        assert state["ExitCode"] == 137


def test_faults_as_a_client_sees_them_through_nginx(bed3: Testbed, http: requests.Session) -> None:
    r0, r1, r2 = bed3.replicas
    # error ramp: replica 0 answers every prediction with a 500 in TF Serving's error shape.
    r0.set_faults({"error_ramp": {"start": 1.0, "end": 1.0, "over_s": 1}})
    by_replica: dict[int | None, Counter[int]] = {}
    for _ in range(60):
        resp = predict(http, bed3)
        by_replica.setdefault(replica_of(bed3, served_by(resp)), Counter())[resp.status_code] += 1
        if resp.status_code == 500:
            assert "error" in resp.json()
    # Nginx does not retry a 500 by default: every request routed to replica 0 fails.
    assert by_replica[0] == {500: 30}
    assert by_replica[1] == {200: 20} and by_replica[2] == {200: 10}
    r0.clear_faults()

    # latency creep beyond the 3 s proxy timeout: Nginx does not retry a POST on timeout (it is not
    # idempotent), so the client gets a 504 after 3 s; max_fails=1 then takes replica 2 out for
    # fail_timeout and the following requests go to the others.
    r2.set_faults({"latency_creep": {"start_ms": 5000, "end_ms": 5000, "over_s": 1}})
    outcomes = []
    for _ in range(12):
        t = time.monotonic()
        resp = predict(http, bed3)
        outcomes.append((time.monotonic() - t, resp.status_code, replica_of(bed3, served_by(resp))))
    timed_out = [o for o in outcomes if o[1] == 504]
    assert len(timed_out) == 1, outcomes
    assert 2.9 <= timed_out[0][0] < 4.0 and timed_out[0][2] == 2
    assert all(status == 200 and idx in (0, 1) for _, status, idx in outcomes if status != 504)
    with open(bed3.nginx.error_log_path) as f:
        assert "upstream timed out (110: Connection timed out) while reading response header from upstream" in f.read()
    r2.clear_faults()

    # hang: replica 1 keeps its process but answers nothing; its health check turns unhealthy.
    events = EventRecorder(bed3.client, bed3.run_id).start()
    try:
        r1.set_faults({"hang": {"after_s": 0}})
        with pytest.raises(requests.exceptions.Timeout):
            http.get(f"{r1.rest_url}/v1/models/{MODEL}", timeout=2)
        # Through Nginx the hung replica costs one client a 3 s wait and a 504, then it is skipped.
        statuses = Counter(predict(http, bed3).status_code for _ in range(8))
        assert statuses == {504: 1, 200: 7}
        events.wait_for(r1.name, "health_status: unhealthy", timeout_s=30)
        assert r1.state()["Running"] is True
    finally:
        events.stop()


def test_crash_aborts_with_fatal_line_and_restarts(docker_client: docker.DockerClient) -> None:
    cfg = TestbedConfig(replicas=1, weights=(1,), with_alertmanager=False)
    with Testbed(cfg) as bed:
        replica = bed.replicas[0]
        events = EventRecorder(docker_client, bed.run_id).start()
        try:
            t0 = time.time()
            replica.set_faults({"crash": {"after_s": 0.5}})
            die = events.wait_for(replica.name, "die", timeout_s=20, after=t0)
            # A failed CHECK aborts (SIGABRT, 134). As PID 1 of its container - as tensorflow_model_server
            # is in the official image - the self-sent SIGABRT is ignored and glibc's abort() falls back
            # to a faulting instruction, so Docker reports 139.
            assert die.attributes["exitCode"] in {"134", "139"}
        finally:
            events.stop()
        assert replica.wait_available(timeout_s=30) == "2"
        assert any(line[:1] == "F" or "] Check failed" in line for line in replica.logs().splitlines())


def test_failed_load_and_stale_version(bed3: Testbed, http: requests.Session) -> None:
    r0, r1, r2 = bed3.replicas
    # A new version that fails to load on replica 1: it keeps serving version 2, the others move to 3.
    r1.set_faults({"fail_load": {"min_version": 3}})
    bed3.publish_version(3, {"kind": "affine", "scale": 0.5, "offset": 4.0, "load_seconds": 0.2})
    assert r0.wait_available(timeout_s=30, version="3") == "3"
    assert r2.wait_available(timeout_s=30, version="3") == "3"
    deadline = time.monotonic() + 20
    failed: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not failed:
        status = r1.model_status()["model_version_status"]
        failed = [v for v in status if v["version"] == "3" and v["status"]["error_code"] != "OK"]
        time.sleep(0.3)
    assert failed and failed[0]["state"] == "END"
    assert r1.serving_version() == "2"

    # Stale version: replica 2 restarts and comes back serving version 1.
    r2.set_faults({"stale_on_restart": {"version": 1}})
    r2.container.restart(timeout=5)
    assert r2.wait_available(timeout_s=30, version="1") == "1"
    outputs: Counter[str] = Counter()
    for _ in range(30):
        resp = predict(http, bed3)
        idx = replica_of(bed3, served_by(resp))
        outputs[f"{idx}:{json.dumps(resp.json()['predictions'])}"] += 1
    assert outputs[f"2:{json.dumps(EXPECTED['1'])}"] == 5  # weight 1 of 6 -> 5 of 30, all stale


def test_demo_phase_without_the_watcher_shows_the_oom(docker_client: docker.DockerClient) -> None:
    import io

    from rich.console import Console

    from testbed.demo import Scenario, run_phase

    console = Console(file=io.StringIO(), width=140)
    result = run_phase(Scenario("leak", "leak", seconds=45, memory_limit="128m"), False, console, live_view=False)
    assert result.oom_kills >= 1  # the seed design lets the kernel kill it
    assert result.failed > 0  # and clients see the RESOURCE_EXHAUSTED answers before that
