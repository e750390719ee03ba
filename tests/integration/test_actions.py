"""The actuators against the real testbed: Nginx, HAProxy, Docker, Alertmanager, the model servers.

One testbed for the module (3 replicas, weights 3:2:1, with HAProxy); every test puts back what it
changed, so the order of tests does not matter for what they assert.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator

import docker
import pytest
import requests

from testbed.stack import Testbed, TestbedConfig
from watcher.actions import (
    ActionError,
    Alert,
    AlertmanagerAlerter,
    DockerRestarter,
    HAProxyShifter,
    HostNginxReload,
    NginxShifter,
    Replica,
    Verifier,
)
from watcher.model import Target

pytestmark = pytest.mark.integration

MODEL = "half_plus_two"
BODY = json.dumps({"instances": [1.0, 2.0, 5.0]})


@pytest.fixture(scope="module")
def bed(docker_client: docker.DockerClient) -> Iterator[Testbed]:
    with Testbed(TestbedConfig(replicas=3, weights=(3, 2, 1), with_haproxy=True)) as tb:
        yield tb


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # loopback only
    session.headers["Connection"] = "close"  # no keep-alive pinned to a worker across reloads
    yield session
    session.close()


def replica(bed: Testbed, i: int, lb_name: bool = False) -> Replica:
    r = bed.replicas[i]
    return Replica(Target(r.name, service=MODEL), r.address, r.rest_url, MODEL, lb_name=r.name if lb_name else None)


def nginx_shifter(bed: Testbed) -> NginxShifter:
    assert bed.nginx is not None
    n = bed.nginx
    reload = HostNginxReload(
        pid_file=n.workdir / "nginx.master.pid",
        nginx=n.binary_path(),
        args=("-q", "-p", f"{n.workdir}/", "-c", str(n.conf_path)),
    )
    return NginxShifter(n.upstreams_conf_path, reload, access_log=n.access_log_path, quiet_s=0.3)


def through(http: requests.Session, url: str, n: int, header: str = "X-Upstream") -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        resp = http.post(f"{url}/v1/models/{MODEL}:predict", data=BODY, timeout=10)
        assert resp.status_code == 200, resp.text
        seen[resp.headers.get(header, "").split(",")[-1].strip()] += 1
    return seen


def in_background(http: requests.Session, url: str, n: int) -> tuple[list[threading.Thread], list[requests.Response]]:
    out: list[requests.Response] = []

    def one() -> None:
        with requests.Session() as s:
            s.trust_env = False
            out.append(s.post(f"{url}/v1/models/{MODEL}:predict", data=BODY, timeout=10))

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, out


# ------------------------------------------------------------------------------------------ nginx


def test_nginx_drain_stops_traffic_and_restore_brings_back_the_original(bed: Testbed, http: requests.Session) -> None:
    shifter = nginx_shifter(bed)
    r0 = replica(bed, 0)
    original_text = bed.nginx.upstreams_conf_path.read_text()  # type: ignore[union-attr]
    assert shifter.get_weight(r0) == 3
    shifter.set_weight(r0, 0)
    try:
        assert shifter.get_weight(r0) == 0
        # a new shifter (a restarted watcher) still knows the weight to restore
        assert nginx_shifter(bed).original_weight(r0) == 3
        seen = through(http, bed.url, 30)
        assert r0.upstream not in seen and sum(seen.values()) == 30
        assert shifter.wait_idle(r0, timeout_s=10)
    finally:
        shifter.set_weight(r0, shifter.original_weight(r0))
    assert bed.nginx.upstreams_conf_path.read_text() == original_text  # type: ignore[union-attr]
    seen = through(http, bed.url, 60)
    assert [seen[replica(bed, i).upstream] for i in range(3)] == [30, 20, 10]


def test_nginx_refuses_a_bad_config_and_traffic_keeps_flowing(bed: Testbed, http: requests.Session) -> None:
    assert bed.nginx is not None
    path = bed.nginx.upstreams_conf_path
    good = path.read_text()
    broken = good.replace("upstream backends {\n", "upstream backends {\n    bogus_directive on;\n")
    path.write_text(broken)  # an operator's broken edit, not yet reloaded
    workers = set(bed.nginx.worker_pids())
    try:
        with pytest.raises(ActionError, match="bogus_directive"):
            nginx_shifter(bed).set_weight(replica(bed, 1), 0)
        # the file is what Nginx last accepted and still runs (issue #14: a refused change restores it),
        # not the broken edit, which the refusal's alert names with its [emerg] line
        assert path.read_text() == good
        assert set(bed.nginx.worker_pids()) == workers  # no HUP was sent
        seen = through(http, bed.url, 12)
        assert all(seen[replica(bed, i).upstream] > 0 for i in range(3))
    finally:
        path.write_text(good)


def test_nginx_wait_idle_waits_for_a_slow_request_on_the_drained_replica(bed: Testbed, http: requests.Session) -> None:
    shifter = nginx_shifter(bed)
    r2 = replica(bed, 2)
    bed.replicas[2].set_faults({"latency_creep": {"start_ms": 2000, "end_ms": 2000, "over_s": 0}})
    try:
        threads, responses = in_background(http, bed.url, 6)  # 3:2:1 -> one lands on replica 2
        time.sleep(0.3)
        shifter.set_weight(r2, 0)
        started = time.monotonic()
        assert shifter.wait_idle(r2, timeout_s=0.3) is False  # the slow request is still in flight
        assert shifter.wait_idle(r2, timeout_s=10) is True
        assert time.monotonic() - started < 5
        for t in threads:
            t.join(timeout=10)
        assert [r.status_code for r in responses] == [200] * 6  # the in-flight request completed
        assert r2.upstream in {r.headers["X-Upstream"] for r in responses}
    finally:
        bed.replicas[2].clear_faults()
        shifter.set_weight(r2, shifter.original_weight(r2))
    assert shifter.get_weight(r2) == 1


# ----------------------------------------------------------------------------------------- haproxy


def haproxy(bed: Testbed) -> tuple[HAProxyShifter, str]:
    assert bed.haproxy is not None
    return HAProxyShifter(bed.haproxy.socket_path, bed.haproxy.backend), bed.haproxy.url


def test_haproxy_drain_ready_and_weight(bed: Testbed, http: requests.Session) -> None:
    shifter, url = haproxy(bed)
    r0, r1 = replica(bed, 0, lb_name=True), replica(bed, 1, lb_name=True)
    assert (shifter.get_weight(r0), shifter.original_weight(r0)) == (3, 3)
    shifter.set_weight(r0, 0)
    try:
        assert shifter.get_weight(r0) == 0 and shifter.original_weight(r0) == 3
        seen = through(http, url, 24, header="X-Upstream-Name")
        assert r0.target.container not in seen
        shifter.set_weight(r1, 6)  # matched by address when no lb_name is given, too
        assert shifter.get_weight(replica(bed, 1)) == 6
        shifter.set_weight(r0, 0)  # idempotent
    finally:
        shifter.set_weight(r0, shifter.original_weight(r0))
        shifter.set_weight(r1, shifter.original_weight(r1))
    seen = through(http, url, 12, header="X-Upstream-Name")
    assert [seen[bed.replicas[i].name] for i in range(3)] == [6, 4, 2]


def test_haproxy_wait_idle_follows_current_sessions(bed: Testbed, http: requests.Session) -> None:
    shifter, url = haproxy(bed)
    others = [replica(bed, i, lb_name=True) for i in (0, 1)]
    r2 = replica(bed, 2, lb_name=True)
    bed.replicas[2].set_faults({"latency_creep": {"start_ms": 1500, "end_ms": 1500, "over_s": 0}})
    try:
        for r in others:
            shifter.set_weight(r, 0)  # all new traffic to replica 2
        threads, responses = in_background(http, url, 1)
        time.sleep(0.3)
        shifter.set_weight(r2, 0)
        assert shifter.sessions(r2) >= 1
        assert shifter.wait_idle(r2, timeout_s=0.2) is False
        assert shifter.wait_idle(r2, timeout_s=10) is True
        threads[0].join(timeout=10)
        assert responses[0].status_code == 200
    finally:
        bed.replicas[2].clear_faults()
        for r in (*others, r2):
            shifter.set_weight(r, shifter.original_weight(r))


# ------------------------------------------------------------------------------- docker and verify


def test_restart_then_model_available_and_smoke_passes(bed: Testbed, docker_client: docker.DockerClient) -> None:
    restarter = DockerRestarter({"local": docker_client})
    verifier = Verifier()
    r1 = replica(bed, 1)
    before = restarter.state(r1.target)
    state = restarter.restart(r1.target, stop_timeout_s=5)
    assert state["running"] and state["started_at"] != before["started_at"]
    version = verifier.wait_available(r1, timeout_s=30)
    expected = Verifier.expected_version(bed.model_repo / MODEL, None, before=None)
    assert version == expected == "2"
    verifier.smoke(r1, version, bed.model_repo)
    assert verifier.load_failed(r1) is None


def test_recreate_gives_a_new_container_with_the_same_config(bed: Testbed, docker_client: docker.DockerClient) -> None:
    restarter = DockerRestarter({"local": docker_client})
    r1 = replica(bed, 1)
    old = docker_client.containers.get(r1.target.container)
    state = restarter.recreate(r1.target, stop_timeout_s=5)
    new = docker_client.containers.get(r1.target.container)
    assert new.id != old.id and state["running"]
    assert new.labels == old.labels and new.attrs["HostConfig"]["Memory"] == old.attrs["HostConfig"]["Memory"]
    assert Verifier().wait_available(r1, timeout_s=30) == "2"
    assert len(docker_client.containers.list(all=True, filters={"name": r1.target.container})) == 1


def test_stale_version_after_restart_fails_smoke_with_a_clear_message(
    bed: Testbed, docker_client: docker.DockerClient
) -> None:
    restarter = DockerRestarter({"local": docker_client})
    verifier = Verifier()
    r2 = replica(bed, 2)
    before = verifier.served_version(r2)
    bed.replicas[2].set_faults({"stale_on_restart": {"version": 1}})
    try:
        restarter.restart(r2.target, stop_timeout_s=5)
        assert verifier.wait_available(r2, timeout_s=30) == "1"
        expected = Verifier.expected_version(bed.model_repo / MODEL, None, before)
        assert expected == "2"
        with pytest.raises(ActionError) as info:
            verifier.smoke(r2, expected, bed.model_repo)
        msg = str(info.value)
        assert "expected version 2" in msg and "expected [3.5, 4.0, 5.5], got [2.5, 3.0, 4.5]" in msg
        assert "serves version 1" in msg
        with pytest.raises(ActionError, match=r"version 2\) within"):
            verifier.wait_available(r2, timeout_s=0.5, version="2")
    finally:
        bed.replicas[2].clear_faults()
        restarter.restart(r2.target, stop_timeout_s=5)
        verifier.wait_available(r2, timeout_s=30, version="2")


# ---------------------------------------------------------------------------------------- alerts


def test_alertmanager_fire_then_resolve(bed: Testbed) -> None:
    assert bed.alertmanager is not None
    alerter = AlertmanagerAlerter(bed.alertmanager.url)
    alert = Alert.build(
        "WatcherActionsTest",
        replica(bed, 0).target,
        severity="critical",
        labels={"run": bed.run_id},
        annotations={"summary": "replica kept drained: version mismatch"},
    )

    def listed() -> list[dict[str, object]]:
        return [a for a in bed.alertmanager.alerts() if a["labels"].get("alertname") == "WatcherActionsTest"]  # type: ignore[union-attr]

    alerter.fire(alert)
    alerter.fire(alert)  # deduplicated: not re-sent
    assert alerter.sent_count == 1
    deadline = time.monotonic() + 10
    while not listed() and time.monotonic() < deadline:
        time.sleep(0.1)
    [got] = listed()
    assert got["labels"] == {**alert.labels}
    assert got["annotations"] == {"summary": "replica kept drained: version mismatch"}
    alerter.resolve(alert)
    deadline = time.monotonic() + 10
    while listed() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listed() == []
