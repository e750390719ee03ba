"""A Docker engine stops answering and comes back: the log source resumes from its cursor.

The integration test (tests/integration/test_engine_restart.py) restarts a real dockerd; this pins the
path at unit level with a fake engine: the follower's stream ends with the engine, the inventory's
listing fails (the replica is unknown, its position kept), and the first rescan that lists the engine
again re-attaches the container from the last delivered position — lines at that same timestamp that
were already delivered are skipped, the ones written during the outage are delivered, once each.
"""

from __future__ import annotations

import socket
import struct
import time
from datetime import UTC, datetime
from typing import Any

import docker

from tests.unit.test_inventory import NAMES, FakeApi, FakeEngine, wait_until
from watcher.inventory import Inventory
from watcher.model import LogRecord
from watcher.sources.base import SignalQueue
from watcher.sources.docker_logs import DockerLogsSource, since_param
from watcher.store import Store
from watcher.timefmt import parse_rfc3339_ns


class _Response:
    """A finished stream on a real socket, as the source reads it: the body, then the end."""

    def __init__(self, body: bytes) -> None:
        self.sock, peer = socket.socketpair()
        peer.sendall(body)
        peer.close()
        self.raw = None

    def close(self) -> None:
        self.sock.close()


class LogsApi(FakeApi):
    """The logs endpoint of a fake engine: the lines since ``since``, then the engine dies."""

    def __init__(self, engine: FakeEngine) -> None:
        super().__init__(engine)
        self.lines: list[tuple[str, str]] = []  # (Docker timestamp, text)
        self.since: list[str] = []

    def _url(self, pathfmt: str, *args: Any, **kwargs: Any) -> str:
        return pathfmt.format(*args)

    def _get(self, url: str, params: dict[str, Any], stream: bool) -> _Response:
        if self.engine.failing:
            raise docker.errors.APIError("engine unreachable")
        self.since.append(params.get("since", ""))  # none: the whole log (no cursor, no backfill bound)
        seconds, _, nanos = (params.get("since") or "0").partition(".")
        since_ns = int(seconds) * 10**9 + int(nanos.ljust(9, "0"))
        body = b""
        for ts, text in self.lines:
            if parse_rfc3339_ns(ts) >= since_ns:  # Docker's since is inclusive
                payload = f"{ts} {text}\n".encode()
                body += struct.pack(">BxxxL", 1, len(payload)) + payload
        self.engine.failing = True  # the engine goes away right after sending them
        return _Response(body)

    def _raise_for_status(self, res: Any) -> None:
        return None

    def _get_raw_response_socket(self, res: _Response) -> socket.socket:
        return res.sock

    def _disable_socket_timeout(self, sock: Any) -> None:
        return None

    def inspect_container(self, cid: str) -> dict[str, Any]:
        if self.engine.failing:
            raise docker.errors.APIError("engine unreachable")
        return {"State": {"Running": self.engine.by_id[cid].running}}


BASE_S = int(time.time()) - 60  # any fixed time: the source reads the whole log (backfill_s=None)


def ts(second: int, nanos: int = 0) -> str:
    base = datetime.fromtimestamp(BASE_S + second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def test_an_engine_that_returns_resumes_each_log_from_its_cursor(tmp_path: Any) -> None:
    engine = FakeEngine()
    api = engine.api = LogsApi(engine)
    engine.run("tfs-0", quiet=True)
    api.lines = [(ts(1), "one"), (ts(2, 5), "two"), (ts(2, 5), "three")]  # two lines share a timestamp
    inventory = Inventory({"a": engine}, NAMES, rescan_s=3600)  # type: ignore[dict-item]
    inventory.rescan()
    queue = SignalQueue(100, 100)
    logs = DockerLogsSource(queue, Store(tmp_path / "s.db"), backfill_s=None, inventory=inventory)
    logs.start()
    delivered: list[str] = []

    def drain() -> list[str]:
        for envelope in queue.get_batch(100, 0):
            assert isinstance(envelope.signal, LogRecord)
            delivered.append(envelope.signal.message)
        return delivered

    try:
        wait_until(lambda: drain() == ["one", "two", "three"])
        wait_until(lambda: not logs.followed())  # the stream ended with the engine: the follower is gone
        inventory.rescan()
        assert [c.name for c in inventory.snapshot().unknown()] == ["tfs-0"]
        api.lines.append((ts(3), "four"))  # written while the engine was away
        engine.failing = False
        inventory.rescan()  # the first listing that succeeds re-attaches the container
        wait_until(lambda: drain() == ["one", "two", "three", "four"])
        assert api.since[1] == since_param(parse_rfc3339_ns(ts(2, 5)))  # from the last delivered line
        time.sleep(0.2)
        assert drain() == ["one", "two", "three", "four"]  # nothing repeated
    finally:
        logs.stop()
