"""Every :class:`~watcher.sources.base.Source` honours the same lifecycle and queue contract.

Implementations are found by walking ``Source.__subclasses__()``; each supplies a factory in
:data:`FACTORIES` (``test_every_source_has_a_factory`` fails until it has one). The backends are
what a unit test can have without Docker: real files, a tiny Prometheus on 127.0.0.1, and for the
Docker sources an engine address where nothing listens (so they exercise the "backend down" path:
reported in ``status``, never raised, never blocking ``stop``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest

import watcher.sources.docker_events
import watcher.sources.docker_logs
import watcher.sources.docker_stats
import watcher.sources.file_logs
import watcher.sources.probes
import watcher.sources.prometheus
from tests.plugins import implementations
from watcher.model import Sample, Target
from watcher.sources.base import Envelope, SignalQueue, Source
from watcher.store import Store

NOWHERE = "tcp://127.0.0.1:1"  # nothing listens on port 1: a Docker engine that is down


@dataclass
class Rig:
    source: Source
    produce: Callable[[], None]  # make the backend hand the source something to put
    close: Callable[[], None]


class FakePrometheus:
    """Answers every instant query with one sample for replica ``r0``."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                result = [{"metric": {"replica": "r0"}, "value": [time.time(), "1"]}]
                body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _down_engine() -> dict[str, Any]:
    return {"local": docker.DockerClient(base_url=NOWHERE, version="1.43", timeout=1)}


def _file_logs(tmp: Path, q: SignalQueue) -> Rig:
    log = tmp / "app.log"
    log.write_text("")
    source = watcher.sources.file_logs.FileLogsSource(
        q, None, [watcher.sources.file_logs.FileSpec(log, Target("app"))], poll_s=0.02
    )

    def produce() -> None:
        with log.open("a") as fh:
            fh.writelines(f"line {i}\n" for i in range(200))

    return Rig(source, produce, lambda: None)


def _prometheus(tmp: Path, q: SignalQueue) -> Rig:
    prom = FakePrometheus()
    query = watcher.sources.prometheus.PromQuery("up", "up")
    source = watcher.sources.prometheus.PrometheusSource(q, prom.url, [query], interval_s=0.05, timeout_s=0.5)
    return Rig(source, lambda: None, prom.close)


def _docker_logs(tmp: Path, q: SignalQueue) -> Rig:
    store = Store(tmp / "store.db")
    source = watcher.sources.docker_logs.DockerLogsSource(q, store, engines=_down_engine(), rescan_s=0.1)
    return Rig(source, lambda: None, store.close)


def _docker_events(tmp: Path, q: SignalQueue) -> Rig:
    source = watcher.sources.docker_events.DockerEventsSource(q, None, engines=_down_engine(), backoff_cap_s=0.2)
    return Rig(source, lambda: None, lambda: None)


def _docker_stats(tmp: Path, q: SignalQueue) -> Rig:
    source = watcher.sources.docker_stats.DockerStatsSource(q, engines=_down_engine(), interval_s=0.1)
    return Rig(source, lambda: None, lambda: None)


def _probes(tmp: Path, q: SignalQueue) -> Rig:
    source = watcher.sources.probes.ProbesSource(q, engines=_down_engine(), interval_s=0.1, timeout_s=0.1)
    return Rig(source, lambda: None, lambda: None)


FACTORIES: dict[type[Source], Callable[[Path, SignalQueue], Rig]] = {
    watcher.sources.file_logs.FileLogsSource: _file_logs,
    watcher.sources.prometheus.PrometheusSource: _prometheus,
    watcher.sources.docker_logs.DockerLogsSource: _docker_logs,
    watcher.sources.docker_events.DockerEventsSource: _docker_events,
    watcher.sources.docker_stats.DockerStatsSource: _docker_stats,
    watcher.sources.probes.ProbesSource: _probes,
}


def _implementations() -> set[type[Source]]:
    return implementations(Source)


def test_every_source_has_a_factory() -> None:
    assert _implementations() == set(FACTORIES)


@pytest.fixture(params=list(FACTORIES), ids=lambda c: c.__name__)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[SignalQueue], Rig]]:
    rigs: list[Rig] = []

    def build(q: SignalQueue) -> Rig:
        rigs.append(FACTORIES[request.param](tmp_path, q))
        return rigs[-1]

    yield build
    for rig in rigs:
        rig.source.stop()
        rig.close()


def _ours(before: set[threading.Thread]) -> list[threading.Thread]:
    """Threads started since ``before`` that are still alive (HTTP fakes' handlers excepted)."""
    return [t for t in threading.enumerate() if t not in before and t.is_alive() and "process_request" not in t.name]


def _settle(check: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_status_shape(make: Callable[[SignalQueue], Rig]) -> None:
    rig = make(SignalQueue(100, 100))
    for when in ("before start", "running", "stopped"):
        status = rig.source.status()
        assert {"name", "connected", "last_error"} <= set(status), when
        assert status["name"] == rig.source.name and isinstance(status["connected"], bool)
        assert status["last_error"] is None or isinstance(status["last_error"], str)
        json.dumps(status)  # it goes to /status as it is
        if when == "before start":
            rig.source.start()
            time.sleep(0.3)
        elif when == "running":
            rig.source.stop()


def test_start_and_stop_are_idempotent_and_stop_joins(make: Callable[[SignalQueue], Rig]) -> None:
    rig = make(SignalQueue(100, 100))
    rig.source.stop()  # never started: harmless
    before = set(threading.enumerate())
    rig.source.start()
    time.sleep(0.3)
    running = len(_ours(before))
    assert running >= 1, "start() started no thread"
    rig.source.start()  # a second start while running changes nothing
    time.sleep(0.3)
    assert len(_ours(before)) <= running
    start = time.monotonic()
    rig.source.stop()
    assert time.monotonic() - start < 8
    assert _settle(lambda: not _ours(before), 1.0), f"threads left after stop: {_ours(before)}"
    rig.source.stop()  # twice: harmless


def test_never_blocks_on_a_full_queue(make: Callable[[SignalQueue], Rig]) -> None:
    q = SignalQueue(max_per_source=1, max_total=1)
    q.put(Envelope(Sample("x", 0.0, 1.0, Target("other")), "other"))  # full: every put will be dropped
    rig = make(q)
    rig.source.start()
    rig.produce()
    time.sleep(0.5)
    start = time.monotonic()
    rig.source.stop()
    assert time.monotonic() - start < 8  # no thread was stuck in put()
    assert q.depth == 1
    if type(rig.source) in (watcher.sources.file_logs.FileLogsSource, watcher.sources.prometheus.PrometheusSource):
        assert q.stats()["dropped_total"] >= 1  # these backends did hand something over: it was counted
