"""Many containers' log streams, one reader: live lines, chunked framing, re-follow, clean stop.

A fake engine serves each container's log stream on a real socket pair, HTTP-chunked and
Docker-multiplexed like dockerd's, so the source reads them through the same selector, decoder and
cursor path as it does against a real engine (``tests/integration/test_sources.py``).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_inventory import NAMES, FakeApi, FakeEngine, wait_until
from watcher.inventory import Inventory
from watcher.model import LogRecord
from watcher.sources.base import SignalQueue
from watcher.sources.docker_logs import ChunkedDecoder, DockerLogsSource, FrameSplitter, LogCursor, since_param
from watcher.store import Store
from watcher.timefmt import parse_rfc3339_ns

BASE_S = 1_700_000_000


def ts(second: int, nanos: int = 0) -> str:
    return datetime.fromtimestamp(BASE_S + second, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def frame(stream: int, text: str) -> bytes:
    payload = text.encode()
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class _ChunkedFp:
    chunked = True
    fp = None  # nothing read past the headers


class _Raw:
    _fp = _ChunkedFp()


class _Response:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = _Raw()

    def close(self) -> None:
        self.sock.close()


class LiveLogsApi(FakeApi):
    """Each logs call opens a socket pair; the test writes the engine's end as lines happen."""

    def __init__(self, engine: FakeEngine) -> None:
        super().__init__(engine)
        self.streams: dict[str, list[socket.socket]] = {}  # container ID -> engine ends, newest last
        self.since: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def _url(self, pathfmt: str, *args: Any, **kwargs: Any) -> str:
        return args[0]

    def _get(self, cid: str, params: dict[str, Any], stream: bool) -> _Response:
        ours, theirs = socket.socketpair()
        with self._lock:
            self.streams.setdefault(cid, []).append(theirs)
            self.since.setdefault(cid, []).append(params.get("since", ""))
        return _Response(ours)

    def _raise_for_status(self, res: Any) -> None:
        return None

    def _get_raw_response_socket(self, res: _Response) -> socket.socket:
        return res.sock

    def inspect_container(self, cid: str) -> dict[str, Any]:
        return {"State": {"Running": self.engine.by_id[cid].running}}

    def end(self, cid: str) -> socket.socket:
        with self._lock:
            return self.streams[cid][-1]


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    engine = FakeEngine()
    api = engine.api = LiveLogsApi(engine)
    inventory = Inventory({"e1": engine}, NAMES, rescan_s=3600)  # type: ignore[dict-item]
    queue = SignalQueue(10_000, 100_000)
    store = Store(tmp_path / "s.db")
    sources: list[DockerLogsSource] = []

    def make() -> DockerLogsSource:
        src = DockerLogsSource(queue, store, backfill_s=None, inventory=inventory)
        sources.append(src)
        return src

    yield engine, api, inventory, queue, make
    for src in sources:
        src.stop()
    inventory.stop()


def drain(queue: SignalQueue, into: dict[str, list[str]]) -> dict[str, list[str]]:
    for env in queue.get_batch(10_000, 0):
        assert isinstance(env.signal, LogRecord) and env.cursor is not None
        into.setdefault(env.signal.target.container, []).append(env.signal.message)
    return into


def test_one_reader_follows_thirty_live_containers_in_order(rig: Any) -> None:
    engine, api, inventory, queue, make = rig
    containers = [engine.run(f"tfs-{i}", quiet=True) for i in range(30)]
    inventory.rescan()
    before = set(threading.enumerate())
    logs = make()
    logs.start()
    wait_until(lambda: len(api.streams) == 30)
    rng = random.Random(3)
    for n in range(20):  # every container writes a line per round, in arbitrary byte pieces
        for i, c in enumerate(containers):
            data = chunk(frame(1 + n % 2, f"{ts(n, i)} c{i} line {n}\n"))
            cut = rng.randint(1, len(data) - 1)
            api.end(c.id).sendall(data[:cut])
            api.end(c.id).sendall(data[cut:])
    got: dict[str, list[str]] = {}
    wait_until(lambda: sum(map(len, drain(queue, got).values())) == 600)
    for i in range(30):
        assert got[f"tfs-{i}"] == [f"c{i} line {n}" for n in range(20)]
    assert len(logs.followed()) == 30
    started = [t.name for t in set(threading.enumerate()) - before]
    assert len(started) <= 5, started  # the reader and at most four workers, not a thread per container


def follow_one(rig: Any) -> tuple[LiveLogsApi, SignalQueue, Any, DockerLogsSource]:
    """One running container, followed: its stream is open on the fake engine."""
    engine, api, inventory, queue, make = rig
    c = engine.run("tfs-0", quiet=True)
    inventory.rescan()
    logs = make()
    logs.start()
    wait_until(lambda: c.id in api.streams)
    return api, queue, c, logs


def test_a_stream_that_ends_while_the_container_runs_is_followed_again_from_its_cursor(rig: Any) -> None:
    api, queue, c, logs = follow_one(rig)
    first = api.end(c.id)
    first.sendall(chunk(frame(1, f"{ts(1)} one\n") + frame(2, f"{ts(2, 7)} two\n")) + b"0\r\n\r\n")
    wait_until(lambda: len(api.streams[c.id]) == 2)  # the last chunk ended it; still running: again
    assert api.since[c.id][1] == since_param(parse_rfc3339_ns(ts(2, 7)))
    again = api.end(c.id)
    again.sendall(chunk(frame(2, f"{ts(2, 7)} two\n") + frame(1, f"{ts(3)} three\n")))  # since is inclusive
    got: dict[str, list[str]] = {}
    wait_until(lambda: drain(queue, got).get("tfs-0") == ["one", "two", "three"])
    assert logs._position("e1", "tfs-0") == LogCursor(ts(3), 1)


def test_a_stream_that_ends_with_its_container_stopped_is_let_go(rig: Any) -> None:
    api, queue, c, logs = follow_one(rig)
    c.running = False
    api.end(c.id).sendall(chunk(frame(1, f"{ts(1)} last words without a newline")))
    api.end(c.id).close()
    got: dict[str, list[str]] = {}
    wait_until(lambda: drain(queue, got).get("tfs-0") == ["last words without a newline"])
    wait_until(lambda: not logs.followed())
    assert len(api.streams[c.id]) == 1


def test_stop_closes_every_stream(rig: Any) -> None:
    engine, api, inventory, _queue, make = rig
    containers = [engine.run(f"tfs-{i}", quiet=True) for i in range(5)]
    inventory.rescan()
    logs = make()
    logs.start()
    wait_until(lambda: len(api.streams) == 5)
    logs.stop()
    for c in containers:
        end = api.end(c.id)
        end.settimeout(2)
        assert end.recv(10) == b""  # the watcher's side is closed


def test_chunked_decoding_whatever_the_pieces() -> None:
    body = b"".join(frame(1, f"line {i}\n") for i in range(300))
    wire = b"".join(chunk(body[i : i + 97]) for i in range(0, len(body), 97)) + b"3;ext=1\r\nabc\r\n0\r\n\r\n"
    rng = random.Random(11)
    for _ in range(20):
        dec, out, pos = ChunkedDecoder(), bytearray(), 0
        while pos < len(wire):
            step = rng.randint(1, 40)
            out += dec.feed(wire[pos : pos + step])
            pos += step
        assert bytes(out) == body + b"abc" and dec.done


def test_a_chunk_size_line_without_end_is_a_broken_stream() -> None:
    with pytest.raises(ValueError, match="chunk size"):
        ChunkedDecoder().feed(b"1" * 2000)


def test_frames_split_whatever_the_pieces() -> None:
    wire = b"".join(frame(1 + i % 2, f"text {i}") for i in range(200)) + struct.pack(">BxxxL", 1, 0)
    rng = random.Random(5)
    sp, got, pos = FrameSplitter(), [], 0
    while pos < len(wire):
        step = rng.randint(1, 30)
        got += sp.feed(wire[pos : pos + step])
        pos += step
    assert got == [("stdout" if i % 2 == 0 else "stderr", f"text {i}".encode()) for i in range(200)]
