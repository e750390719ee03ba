"""One behaviour suite for every traffic shifter, run against the real load balancer it drives.

The model is APScheduler's test suite: one fixture parametrized over every backend, one set of
tests. Here the fixture ``rig`` starts the real server (Nginx or HAProxy, as host processes on
loopback ports) in front of two small in-process HTTP backends, and every test speaks only the
:class:`~watcher.actions.base.TrafficShifter` contract, checking its effect by sending requests
through the load balancer. A new shifter in ``watcher.actions`` fails
``test_every_shifter_has_a_rig`` until it gets a rig here, and then runs the whole suite.

No Docker is used, but the servers take CPU and ports: run under ``flock /tmp/docker.lock``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

import watcher.actions
import watcher.service
from testbed.ports import LOOPBACK, free_port
from testbed.services import HAProxy, HostService, Nginx, Upstream
from tests.plugins import implementations
from watcher.actions.base import ActionError, Replica, TrafficShifter
from watcher.actions.haproxy import HAProxyShifter
from watcher.actions.nginx import HostNginxReload, NginxShifter
from watcher.model import Target

pytestmark = pytest.mark.integration

WEIGHTS = {"b0": 3, "b1": 2}
HOLD_S = 2.5  # how long a /slow request stays in flight


class Backend:
    """A loopback HTTP server that names itself in every answer and counts what it is serving."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.served: Counter[str] = Counter()
        self.in_flight = 0
        self._lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                with backend._lock:
                    backend.in_flight += 1
                try:
                    if self.path.startswith("/slow"):
                        time.sleep(HOLD_S)
                    body = backend.name.encode()
                    self.send_response(200)
                    self.send_header("X-Backend", backend.name)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with backend._lock:
                        backend.in_flight -= 1
                        backend.served[self.path] += 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.address = f"{LOOPBACK}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Rig:
    """A running load balancer, its backends, and how to make a (fresh) shifter for it."""

    kind: str
    url: str
    backends: dict[str, Backend]
    make_shifter: Callable[[], TrafficShifter]
    replicas: dict[str, Replica] = field(default_factory=dict)

    def send(self, n: int, path: str = "/") -> Counter[str]:
        """``n`` requests through the load balancer; which backend answered each."""
        seen: Counter[str] = Counter()
        with requests.Session() as s:
            s.trust_env = False  # loopback only, never through a proxy
            for _ in range(n):
                resp = s.get(self.url + path, timeout=10, headers={"Connection": "close"})
                assert resp.status_code == 200, (resp.status_code, resp.text[:200])
                seen[resp.text] += 1
        return seen


def _nginx(workdir: Path, backends: dict[str, Backend]) -> tuple[HostService, str, Callable[[], TrafficShifter]]:
    lb = Nginx(workdir, free_port(), [Upstream(n, b.address, WEIGHTS[n]) for n, b in backends.items()])

    def make() -> TrafficShifter:
        reload = HostNginxReload(
            pid_file=lb.workdir / "nginx.master.pid",
            nginx=lb.binary_path(),
            args=("-q", "-p", f"{lb.workdir}/", "-c", str(lb.conf_path)),
        )
        return NginxShifter(lb.upstreams_conf_path, reload, access_log=lb.access_log_path, quiet_s=0.3)

    return lb, lb.url, make


def _haproxy(workdir: Path, backends: dict[str, Backend]) -> tuple[HostService, str, Callable[[], TrafficShifter]]:
    lb = HAProxy(workdir, free_port(), "m", [Upstream(n, b.address, WEIGHTS[n]) for n, b in backends.items()])
    return lb, lb.url, lambda: HAProxyShifter(lb.socket_path, lb.backend)


RIGS: dict[
    type[TrafficShifter], Callable[[Path, dict[str, Backend]], tuple[HostService, str, Callable[[], TrafficShifter]]]
] = {
    NginxShifter: _nginx,
    HAProxyShifter: _haproxy,
}
NOT_LOAD_BALANCERS = {watcher.service._NoShifter}  # ``lb: none``: refuses every change by design


def test_every_shifter_has_a_rig() -> None:
    assert watcher.actions.NginxShifter is NginxShifter  # the package is imported: its subclasses exist
    product = implementations(TrafficShifter)
    assert product - NOT_LOAD_BALANCERS == set(RIGS)


@pytest.fixture(params=list(RIGS), ids=lambda c: c.__name__)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    backends = {name: Backend(name) for name in WEIGHTS}
    lb, url, make = RIGS[request.param](tmp_path / "lb", backends)
    try:
        lb.start()
        r = Rig(request.param.__name__, url, backends, make)
        r.replicas = {n: Replica(Target(n), b.address, f"http://{b.address}", "m") for n, b in backends.items()}
        yield r
    finally:
        lb.stop()
        for b in backends.values():
            b.close()


# ------------------------------------------------------------------------------------------ suite


def test_weights_as_configured(rig: Rig) -> None:
    shifter = rig.make_shifter()
    for name, weight in WEIGHTS.items():
        assert shifter.get_weight(rig.replicas[name]) == weight
        assert shifter.original_weight(rig.replicas[name]) == weight
    seen = rig.send(20)
    assert seen["b0"] > seen["b1"] > 0 and sum(seen.values()) == 20


def test_drain_stops_new_requests_and_restore_brings_them_back(rig: Rig) -> None:
    shifter = rig.make_shifter()
    b0 = rig.replicas["b0"]
    shifter.set_weight(b0, 0)
    assert shifter.get_weight(b0) == 0
    assert shifter.original_weight(b0) == 3
    before = sum(rig.backends["b0"].served.values())
    seen = rig.send(20)
    assert seen == Counter({"b1": 20})
    assert sum(rig.backends["b0"].served.values()) == before  # nothing reached it, not even a retry
    shifter.set_weight(b0, shifter.original_weight(b0))
    assert shifter.get_weight(b0) == 3
    seen = rig.send(20)
    assert seen["b0"] > seen["b1"] > 0


def test_repeats_are_idempotent(rig: Rig) -> None:
    shifter = rig.make_shifter()
    b0 = rig.replicas["b0"]
    for _ in range(2):
        shifter.set_weight(b0, 0)
        assert shifter.get_weight(b0) == 0 and shifter.original_weight(b0) == 3
    assert rig.send(10) == Counter({"b1": 10})
    for _ in range(2):
        shifter.set_weight(b0, 3)
        assert shifter.get_weight(b0) == 3 and shifter.original_weight(b0) == 3
    assert rig.send(20)["b0"] > 0


def test_a_new_weight_keeps_the_original_and_state_survives_a_new_shifter(rig: Rig) -> None:
    b0, b1 = rig.replicas["b0"], rig.replicas["b1"]
    first = rig.make_shifter()
    first.set_weight(b0, 0)
    first.set_weight(b1, 5)
    del first  # a restarted watcher: nothing but the load balancer's own state remains
    second = rig.make_shifter()
    assert (second.get_weight(b0), second.original_weight(b0)) == (0, 3)
    assert (second.get_weight(b1), second.original_weight(b1)) == (5, 2)
    second.set_weight(b0, second.original_weight(b0))
    second.set_weight(b1, second.original_weight(b1))
    third = rig.make_shifter()
    assert [(third.get_weight(r), third.original_weight(r)) for r in (b0, b1)] == [(3, 3), (2, 2)]


def test_wait_idle_without_requests_in_flight(rig: Rig) -> None:
    shifter = rig.make_shifter()
    b0 = rig.replicas["b0"]
    shifter.set_weight(b0, 0)
    start = time.monotonic()
    assert shifter.wait_idle(b0, timeout_s=10)
    assert time.monotonic() - start < 5


def test_wait_idle_waits_for_requests_in_flight(rig: Rig) -> None:
    shifter = rig.make_shifter()
    b0, b1 = rig.replicas["b0"], rig.replicas["b1"]
    shifter.set_weight(b1, 0)  # every request now goes to b0
    answers: list[int] = []

    def slow() -> None:
        with requests.Session() as s:
            s.trust_env = False
            answers.append(s.get(rig.url + "/slow", timeout=HOLD_S + 10).status_code)

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while rig.backends["b0"].in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rig.backends["b0"].in_flight == 2
    shifter.set_weight(b0, 0)  # drained with two requests in flight: they must finish, not break
    assert not shifter.wait_idle(b0, timeout_s=0.2)
    assert shifter.wait_idle(b0, timeout_s=HOLD_S + 10)
    assert rig.backends["b0"].in_flight == 0
    for t in threads:
        t.join(timeout=10)
    assert answers == [200, 200]
    shifter.set_weight(b0, 3)
    shifter.set_weight(b1, 2)


def test_unknown_replica_and_bad_weight_are_action_errors(rig: Rig) -> None:
    shifter = rig.make_shifter()
    ghost = Replica(Target("ghost"), f"{LOOPBACK}:1", f"http://{LOOPBACK}:1", "m")
    with pytest.raises(ActionError):
        shifter.get_weight(ghost)
    with pytest.raises(ActionError):
        shifter.original_weight(ghost)
    with pytest.raises(ActionError):
        shifter.set_weight(ghost, 0)
    with pytest.raises(ActionError):
        shifter.wait_idle(ghost, timeout_s=0.5)
    with pytest.raises(ActionError):
        shifter.set_weight(rig.replicas["b0"], -1)
    assert shifter.get_weight(rig.replicas["b0"]) == 3  # a refused change changes nothing
    assert rig.send(20)["b0"] > 0
