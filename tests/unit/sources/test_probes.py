"""Active probes against real loopback servers: the simulator as a host process (for a real hang)
and a tiny fake TF Serving (to count requests and to delay one answer). The engine runs the
shipped foresight pack, so these tests see what the watcher would find."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from watcher.clock import WallClock
from watcher.engine import Engine
from watcher.inventory import Snapshot, WatchedContainer
from watcher.model import Finding, Target
from watcher.rulepack.compile import load_packs
from watcher.sources.base import SignalQueue
from watcher.sources.probes import ProbesSource, tfserving_status

REPO = Path(__file__).resolve().parents[3]
SIM = REPO / "testbed" / "simulator" / "tfserving_sim.py"
MODEL = "half_plus_two"
FORESIGHT = REPO / "watcher" / "rules" / "foresight.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replica(name: str, upstream: str, running: bool = True, started_at: str = "t1") -> WatchedContainer:
    return WatchedContainer(
        engine="local",
        id=f"id-{name}",
        name=name,
        target=Target(name, service="svc"),
        labels={},
        upstream=upstream,
        model=MODEL,
        running=running,
        health=None,
        started_at=started_at,
        tty=False,
    )


class FakeInventory:
    """The inventory as the probes read it: a snapshot of the watched containers."""

    engine_names = ("local",)

    def __init__(self, containers: list[WatchedContainer]) -> None:
        self.containers = containers

    def snapshot(self) -> Snapshot:
        return Snapshot({"local": {c.id: c for c in self.containers}}, {"local": True})

    def engine_states(self) -> dict[str, Any]:
        return {}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class FakeTFServing:
    """Answers GET /v1/models/<model> as TF Serving does; counts requests; delays the answers
    whose (1-based) numbers are in ``slow`` by ``delay_s``."""

    def __init__(self, slow: frozenset[int] = frozenset(), delay_s: float = 1.0) -> None:
        self.count = 0
        self.paths: list[str] = []
        self.arrivals: list[float] = []  # monotonic time of each request
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    outer.count += 1
                    outer.paths.append(self.path)
                    outer.arrivals.append(time.monotonic())
                    n = outer.count
                if n in slow:
                    time.sleep(delay_s)
                body = json.dumps(
                    {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the probe gave up on a slow answer
                    self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Watch:
    """The probes feeding an engine with the shipped foresight pack, on a thread, like the live driver."""

    def __init__(self, inventory: FakeInventory, interval_s: float = 0.5, timeout_s: float = 0.3) -> None:
        self.queue = SignalQueue()
        self.source = ProbesSource(self.queue, inventory=inventory, interval_s=interval_s, timeout_s=timeout_s)  # type: ignore[arg-type]
        self.engine = Engine(load_packs([FORESIGHT]), WallClock())
        self.findings: list[tuple[float, Finding]] = []  # (monotonic time found, finding)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self.queue.get_batch(timeout_s=0.05)
            found = self.engine.feed_batch([e.signal for e in batch]) if batch else []
            now = time.monotonic()
            self.findings += [(now, f) for f in found if f.rule_id == "probe-unanswered"]

    def __enter__(self) -> Watch:
        self.source.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.source.stop()
        self._stop.set()
        self._thread.join(timeout=5)

    def raised(self) -> list[tuple[float, Finding]]:
        return [(t, f) for t, f in self.findings if not f.resolved]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The simulator as a host process on free loopback ports: (REST address, admin URL). Killed by its PID."""
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models)
    port, admin = free_port(), free_port()
    args = [
        sys.executable,
        str(SIM),
        f"--rest_api_port={port}",
        f"--model_name={MODEL}",
        f"--model_base_path={models / MODEL}",
        "--file_system_poll_wait_seconds=0.2",
        f"--admin_port={admin}",
        "--bind_address=127.0.0.1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "SIM_FAULTS"}
    with open(tmp_path / "sim.log", "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=out, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                tfserving_status(f"127.0.0.1:{port}", MODEL, 1.0)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError((tmp_path / "sim.log").read_text()[-2000:]) from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_a_hung_replica_is_found_within_1_5_s_of_the_hang(sim: tuple[str, str]) -> None:
    address, admin = sim
    with Watch(FakeInventory([replica("tfs-1", address)])) as watch:
        # it has answered (its failures count from now on); the hang comes just after a round, the
        # worst phase: the next probe starts 0.5 s later and fails at 0.8 s, its confirmation at 1.1 s
        time.sleep(1.05)
        assert watch.raised() == []
        request = urllib.request.Request(f"{admin}/faults", data=b'{"hang": {}}', method="POST")
        urllib.request.urlopen(request, timeout=2).close()
        hung_at = time.monotonic()
        deadline = hung_at + 3.0
        while not watch.raised() and time.monotonic() < deadline:
            time.sleep(0.01)
        raised = watch.raised()
        assert raised, "no finding for a hung replica"
        found_at, finding = raised[0]
        assert finding.target.container == "tfs-1" and finding.predicts.value == "unhealthy"
        print(f"hang found {found_at - hung_at:.2f}s after it started")
        assert found_at - hung_at <= 1.5, f"found {found_at - hung_at:.2f}s after the hang"


def test_one_slow_answer_on_a_healthy_replica_is_no_incident() -> None:
    server = FakeTFServing(slow=frozenset({3}), delay_s=1.0)  # the third probe waits past the timeout
    try:
        with Watch(FakeInventory([replica("tfs-1", server.address)])) as watch:
            time.sleep(4.0)
        assert server.count >= 6  # probes went on after the slow one
        assert watch.findings == []
    finally:
        server.close()


def test_two_slow_answers_in_a_row_are_an_incident() -> None:
    """The boundary of the corroboration: the same replica, two timeouts in a row, is found."""
    server = FakeTFServing(slow=frozenset({3, 4}), delay_s=0.6)
    try:
        with Watch(FakeInventory([replica("tfs-1", server.address)])) as watch:
            time.sleep(3.0)
        assert [f.rule_id for _, f in watch.raised()] == ["probe-unanswered"]
    finally:
        server.close()


def test_a_failed_probe_is_confirmed_at_once_not_at_the_next_turn() -> None:
    """The second probe of a run of failures goes as the first times out (0.3 s), not a period
    (0.5 s) after the first started: the corroboration costs one timeout. Once it answers, the
    period resumes: one extra request per run of failures, no more."""
    server = FakeTFServing(slow=frozenset({3}), delay_s=1.0)
    try:
        with Watch(FakeInventory([replica("tfs-1", server.address)])) as watch:
            time.sleep(3.0)
            status = watch.source.status()
        gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:], strict=False)]
        assert 0.25 <= gaps[2] <= 0.45, gaps  # the 3rd probe timed out at 0.3 s, the 4th went then
        # then the schedule keeps its own phase (the 5th a period after the 3rd): every other gap is a period
        assert 0.4 <= gaps[2] + gaps[3] <= 0.6, gaps
        assert all(g >= 0.4 for i, g in enumerate(gaps) if i not in (2, 3)), gaps
        assert status["confirms"] == 1
        assert watch.findings == []  # the confirmation answered: no incident
    finally:
        server.close()


def test_a_stopped_container_is_not_probed() -> None:
    server = FakeTFServing()
    try:
        with Watch(FakeInventory([replica("tfs-1", server.address, running=False)])) as watch:
            time.sleep(1.5)
        assert server.count == 0
        assert watch.source.sent == 0
    finally:
        server.close()


def test_a_replica_that_has_not_answered_since_its_start_is_not_hung() -> None:
    """Loading its model after a (re)start, nothing listens yet: not a probe finding."""
    nowhere = f"127.0.0.1:{free_port()}"
    with Watch(FakeInventory([replica("tfs-1", nowhere)])) as watch:
        time.sleep(2.0)
    assert watch.source.sent >= 3
    assert watch.findings == []


def test_probe_cost_is_bounded_and_a_slow_replica_never_has_two_probes_in_flight() -> None:
    """Counted server-side over 3 s at a 0.5 s period: the healthy replica gets at most 2 requests
    a second; one that answers nothing in time (timeout 1.2 s, longer than the period) gets a new
    probe only once the last one gave up, so its turns are skipped rather than stacked."""
    healthy = FakeTFServing()
    hung = FakeTFServing(slow=frozenset(range(1, 1000)), delay_s=5.0)
    try:
        inventory = FakeInventory([replica("a", healthy.address), replica("b", hung.address)])
        with Watch(inventory, interval_s=0.5, timeout_s=1.2) as watch:
            time.sleep(3.0)
            hung_count = hung.count
        assert 5 <= healthy.count <= 2 * 3.0 + 1, healthy.count
        assert 2 <= hung_count <= 3, hung_count  # probes at 0, 1.5 and 3.0 s: one in flight at a time
        assert watch.source.skipped >= 3
    finally:
        healthy.close()
        hung.close()


def test_a_replica_without_its_model_label_is_not_probed_and_says_so() -> None:
    server = FakeTFServing()
    try:
        unlabelled = replace(replica("tfs-2", server.address), model=None)
        with Watch(FakeInventory([unlabelled])) as watch:
            time.sleep(1.0)
            status = watch.source.status()
        assert server.count == 0
        assert status["unprobed"] == ["tfs-2"]
        json.dumps(status)
    finally:
        server.close()


def test_a_replica_of_another_protocol_is_probed_with_its_own_readiness_call() -> None:
    """A V2 server (MLServer, KServe, Triton) answers its own readiness call, not TF Serving's: it is
    never taken for hung; a protocol no adapter speaks is not probed and says so."""
    server = FakeTFServing()
    try:
        v2 = replace(replica("ml-0", server.address), protocol="v2")
        unknown = replace(replica("odd-0", server.address), protocol="grpc-only")
        with Watch(FakeInventory([v2, unknown])) as watch:
            time.sleep(1.6)
            status = watch.source.status()
        assert server.paths and all(p.startswith("/v2/") for p in server.paths), server.paths
        assert watch.raised() == [] and status["failing"] == []
        assert status["unprobed"] == ["odd-0"]
    finally:
        server.close()
