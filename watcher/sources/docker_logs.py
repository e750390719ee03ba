"""Follow the logs of selected containers on one or more Docker engines, losing and repeating nothing.

Selection is by label (default ``watcher.enable=true``), made by the inventory
(:mod:`watcher.inventory`): a container is attached when the inventory shows it running (at start,
on its ``start`` event, and on every rescan, which repairs anything an event missed). One reader
thread per container; the follow stream ends when the container stops,
and the reader re-follows at once if the container is running again (``docker restart``).

Cursor: per container, ``"<RFC3339Nano timestamp>|<n>"`` = the newest Docker timestamp delivered
and how many lines carried exactly that timestamp. It is committed by the engine after processing
(``Envelope.cursor``), and on (re)attach the reader asks Docker for ``since=<seconds.nanoseconds>``
(the API parses that string at full nanosecond precision, so no float rounding), then skips the
first ``n`` lines at the cursor's timestamp. Docker's ``since`` is inclusive, so nothing between is
lost; timestamps can collide (two lines in one nanosecond), hence the count.

The cursor key is ``docker_logs/<engine>/<container name>``, not the container ID: a container
re-created under the same name (a deploy, ``docker compose up``) is the same replica to the
operator, and its lines are all newer than the old cursor, so it continues without a gap. An
ID-keyed cursor would find no cursor for the new container and restart from the backfill window,
breaking the continuity that the engine's per-target state (rule timers, baselines) assumes.

Known limit: Docker stamps stdout and stderr in two goroutines, so across the two streams the file
order can be out of timestamp order by microseconds. The cursor keeps the newest timestamp; a line
older than it that arrives after it is delivered live, but would not be re-read after a restart.

Lines are untrusted: decoded with ``errors="replace"``, split on ``\\n`` across frame boundaries,
and capped at 16 KiB (``fields["truncated"] = "1"``); bytes past the cap are discarded as they
arrive, so a line without newline cannot grow memory. Docker itself splits lines longer than
16 KiB into partial entries; those are re-joined here by the newline rule and therefore capped.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import docker
from docker.types.daemon import CancellableStream

from watcher.inventory import (
    DEFAULT_SELECTOR,
    EngineState,
    Inventory,
    Subscriber,
    Update,
    WatchedContainer,
    shared_or_own,
)
from watcher.model import MAX_LINE_BYTES, LogRecord
from watcher.sources.base import Envelope, SignalQueue, Source
from watcher.store import Store
from watcher.timefmt import is_rfc3339, parse_rfc3339_ns

log = logging.getLogger(__name__)

_TS_PREFIX_MAX = 40  # "2024-05-01T10:00:00.123456789Z " is 31 bytes; margin for offsets
_READ_SIZE = 256 * 1024
_STREAMS = {1: "stdout", 2: "stderr"}


# -- pure pieces (unit-tested without Docker) -----------------------------------------------------
def since_param(ts_ns: int) -> str:
    """``seconds.nanoseconds``: the form Docker's API parses at full precision for ``since``."""
    return f"{ts_ns // 1_000_000_000}.{ts_ns % 1_000_000_000:09d}"


@dataclass(frozen=True, slots=True)
class LogCursor:
    """Newest timestamp delivered (as Docker wrote it) and how many lines carried exactly it."""

    ts: str
    seen: int

    @property
    def ts_ns(self) -> int:
        return parse_rfc3339_ns(self.ts)

    def encode(self) -> str:
        return f"{self.ts}|{self.seen}"

    @staticmethod
    def decode(value: str | None) -> LogCursor | None:
        if not value:
            return None
        try:
            ts, n = value.rsplit("|", 1)
            parse_rfc3339_ns(ts)
            return LogCursor(ts, int(n))
        except ValueError:
            return None  # a damaged cursor: fall back to the backfill window rather than crash

    def before(self, other: LogCursor) -> bool:
        """Total order, for consumers that drop repeats: is ``self`` strictly older than ``other``?"""
        return (self.ts_ns, self.seen) < (other.ts_ns, other.seen)


class CursorTracker:
    """Decides, line by line, whether a line is new, and keeps the cursor that says so.

    Started from a committed cursor it skips the first ``seen`` lines at the cursor's timestamp
    (Docker re-sends them because ``since`` is inclusive) and anything older.
    """

    def __init__(self, start: LogCursor | None) -> None:
        self.cursor = start
        self._start_ns = start.ts_ns if start is not None else None
        self._skip = start.seen if start is not None else 0
        self._cur_ns = self._start_ns
        self.last_ns = 0  # the timestamp of the line last passed to ``accept``

    def accept(self, ts: str) -> LogCursor | None:
        """The cursor after this line, or None when the line was already delivered."""
        ts_ns = self.last_ns = parse_rfc3339_ns(ts)
        if self._start_ns is not None and ts_ns <= self._start_ns and self._skip > 0:
            # Re-sent by an inclusive ``since``: skip what the committed cursor covers.
            if ts_ns < self._start_ns:
                return None
            self._skip -= 1
            return None
        if self._start_ns is not None and ts_ns < self._start_ns:
            return None
        self._start_ns = None  # past the replayed prefix: everything from here on is new
        if self.cursor is None or self._cur_ns is None or ts_ns > self._cur_ns:
            self.cursor = LogCursor(ts, 1)
            self._cur_ns = ts_ns
        elif ts_ns == self._cur_ns:
            self.cursor = LogCursor(self.cursor.ts, self.cursor.seen + 1)
        # else: out of order across stdout/stderr; deliver, cursor stays at the newest
        return self.cursor


class LineSplitter:
    """Splits a byte stream into lines across arbitrary chunk boundaries, capping each line.

    ``feed`` returns complete lines as (bytes without newline, truncated). At most ``cap`` bytes of
    an unfinished line are held; the rest is dropped until the next newline.
    """

    def __init__(self, cap: int = MAX_LINE_BYTES + _TS_PREFIX_MAX) -> None:
        self.cap = cap
        self._buf = bytearray()
        self._truncated = False

    def feed(self, chunk: bytes) -> list[tuple[bytes, bool]]:
        out: list[tuple[bytes, bool]] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            room = self.cap - len(self._buf)
            if len(piece) > room:
                self._buf += piece[: max(room, 0)]
                self._truncated = True
            else:
                self._buf += piece
            if nl < 0:
                return out
            out.append((bytes(self._buf), self._truncated))
            self._buf.clear()
            self._truncated = False
            start = nl + 1

    def flush(self) -> tuple[bytes, bool] | None:
        """The unfinished last line when a stream ends without a newline."""
        if not self._buf and not self._truncated:
            return None
        line = (bytes(self._buf), self._truncated)
        self._buf.clear()
        self._truncated = False
        return line


def cursor_key(engine: str, name: str) -> str:
    """The store key of a container's log cursor: by name, see the module docstring."""
    return f"docker_logs/{engine}/{name}"


def split_timestamp(line: bytes) -> tuple[str, bytes] | None:
    """Docker prefixes each line with ``<RFC3339Nano> ``; returns (ts, rest) or None if absent."""
    sp = line.find(b" ", 0, _TS_PREFIX_MAX)
    if sp <= 0:
        return None
    ts = line[:sp].decode("ascii", errors="replace")
    if not is_rfc3339(ts):
        return None
    return ts, line[sp + 1 :]


def cap_message(raw: bytes, truncated: bool, cap: int = MAX_LINE_BYTES) -> tuple[str, bool]:
    if len(raw) > cap:
        raw, truncated = raw[:cap], True
    return raw.decode("utf-8", errors="replace").rstrip("\r"), truncated


# -- one reader per container ----------------------------------------------------------------------
class _Follower:
    def __init__(self, owner: DockerLogsSource, client: docker.DockerClient, container: WatchedContainer) -> None:
        self.owner = owner
        self.engine = engine = container.engine
        self.client = client
        self.container_id = container.id
        self.name = container.name
        self.target = container.target
        self.tty = container.tty
        self.source_key = f"docker_logs:{engine}/{self.name}"
        self.cursor_key = cursor_key(engine, self.name)
        self.rearm = threading.Event()
        self._stream: CancellableStream | None = None
        self._stopped = False
        self.lines = 0
        self.thread = threading.Thread(target=self._run, name=f"logs-{engine}-{self.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stopped = True
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # closing a half-dead socket may fail; the thread ends anyway
                log.debug("closing log stream of %s: %s", self.name, exc)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        while not self._stopped and not self.owner.stopping:
            self.rearm.clear()
            try:
                self._follow_once()
            except Exception as exc:
                if self._stopped or self.owner.stopping:
                    return
                self.owner._error(f"{self.engine}/{self.name}: log stream failed: {exc}")
            if self._stopped or self.owner.stopping:
                return
            # The stream ends when the container stops; follow again if it runs (again) already.
            time.sleep(0.1)
            try:
                running = self.client.api.inspect_container(self.container_id)["State"]["Running"]
            except Exception:
                running = False
            if not running and not self.rearm.is_set():
                return

    def _follow_once(self) -> None:
        api = self.client.api
        start = self.owner._position(self.engine, self.name)
        tracker = CursorTracker(start)
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "timestamps": 1, "follow": 1, "tail": "all"}
        if start is not None:
            params["since"] = since_param(start.ts_ns)
        elif self.owner.backfill_s is not None:
            params["since"] = since_param(int((time.time() - self.owner.backfill_s) * 1e9))
        res = api._get(api._url("/containers/{0}/logs", self.container_id), params=params, stream=True)
        api._raise_for_status(res)
        api._disable_socket_timeout(api._get_raw_response_socket(res))
        stream = CancellableStream(self._frames(res), res)
        self._stream = stream
        if self._stopped:
            stream.close()
            return
        splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        try:
            for kind, data in stream:
                for raw, truncated in splitters[kind].feed(data):
                    self._emit(kind, raw, truncated, tracker)
        finally:
            self._stream = None
            for kind, sp in splitters.items():
                rest = sp.flush()
                if rest is not None and not self._stopped:
                    self._emit(kind, rest[0], rest[1], tracker)

    def _frames(self, res: Any) -> Iterator[tuple[str, bytes]]:
        """(stream, payload) from Docker's multiplexed log stream (raw bytes for a TTY container).

        Reads whatever the socket has (``read1``) and cuts frames out of a buffer: two small reads
        per frame through urllib3 would cap a busy container at a fraction of this rate.
        """
        raw = res.raw
        read = raw.read1 if hasattr(raw, "read1") else raw.read
        if self.tty:
            while data := read(_READ_SIZE):
                yield "stdout", data
            return
        buf = bytearray()
        while data := read(_READ_SIZE):
            buf += data
            pos, end = 0, len(buf)
            while end - pos >= 8:
                kind, length = struct.unpack_from(">BxxxL", buf, pos)
                if end - pos - 8 < length:
                    break
                if length:
                    yield _STREAMS.get(kind, "stdout"), bytes(buf[pos + 8 : pos + 8 + length])
                pos += 8 + length
            del buf[:pos]

    def _emit(self, kind: str, raw: bytes, truncated: bool, tracker: CursorTracker) -> None:
        parts = split_timestamp(raw)
        if parts is None:
            return  # without a timestamp there is no cursor; Docker always sends one when asked
        ts, body = parts
        cursor = tracker.accept(ts)
        if cursor is None:
            return
        message, truncated = cap_message(body, truncated, self.owner.max_line_bytes)
        fields = {"stream": kind, "truncated": "1"} if truncated else {"stream": kind}
        record = LogRecord(target=self.target, ts=tracker.last_ns / 1e9, message=message, fields=fields)
        self.owner.queue.put(Envelope(record, self.source_key, (self.cursor_key, cursor.encode())))
        self.owner._advance(self.engine, self.name, cursor)
        self.lines += 1


# -- the source ---------------------------------------------------------------------------------------
class DockerLogsSource(Source):
    """Logs of every selected container on every configured engine, into the queue with cursors.

    Which containers, and when to (re)attach, comes from the inventory: every update that shows a
    container running (re)attaches it (a no-op for a live follower, which is only told to re-follow
    if its stream just ended), and every full rescan does so for all running containers, repairing
    anything an event missed. Nothing here lists Docker or reads its events.
    """

    name = "docker_logs"

    def __init__(
        self,
        queue: SignalQueue,
        store: Store,
        engines: Mapping[str, Any] | None = None,
        label_selector: Sequence[str] = DEFAULT_SELECTOR,
        service_label: str = "watcher.service",
        rescan_s: float = 10.0,
        backfill_s: float | None = 300.0,
        max_line_bytes: int = MAX_LINE_BYTES,
        inventory: Inventory | None = None,
    ) -> None:
        """``backfill_s``: how far back to read a container that has no cursor yet (None = all of it).
        ``inventory``: the watcher's shared one; without it (``engines``, ``label_selector``,
        ``service_label`` and ``rescan_s`` then describe it) the source keeps a private one."""
        super().__init__(queue)
        self.store = store
        self.inventory, self._owns_inventory = shared_or_own(
            inventory, engines, label_selector, service_label, rescan_s
        )
        self.backfill_s = backfill_s
        self.max_line_bytes = max_line_bytes
        self._followers: dict[tuple[str, str], _Follower] = {}
        self._positions: dict[tuple[str, str], LogCursor] = {}
        self._lock = threading.RLock()
        self._engine_ok: dict[str, bool] = dict.fromkeys(self.inventory.engine_names, False)
        self._subscriber = Subscriber(on_update=self._on_update, on_engine=self._on_engine)

    # positions: what this process already delivered, else what the store committed
    def _position(self, engine: str, name: str) -> LogCursor | None:
        with self._lock:
            pos = self._positions.get((engine, name))
        if pos is not None:
            return pos
        return LogCursor.decode(self.store.get_cursor(cursor_key(engine, name)))

    def _advance(self, engine: str, name: str, cursor: LogCursor) -> None:
        with self._lock:
            self._positions[(engine, name)] = cursor

    def start(self) -> None:
        if not self._claim_start():
            return
        self.inventory.subscribe(self._subscriber)  # before the inventory starts: see the first events
        for engine, state in self.inventory.engine_states().items():
            self._on_engine(engine, state)
        if self._owns_inventory:
            self.inventory.start()  # its first listing arrives as a full update
        else:
            for engine in self.inventory.engine_names:  # the shared inventory may be running already
                snapshot = self.inventory.snapshot()
                self._on_update(Update(engine, snapshot, (), full=True))

    def stop(self) -> None:
        super().stop()
        self.inventory.unsubscribe(self._subscriber)
        if self._owns_inventory:
            self.inventory.stop()
        with self._lock:
            followers = list(self._followers.values())
        for f in followers:
            f.stop()
        for f in followers:
            f.thread.join(timeout=5)
        self.connected = False

    def followed(self) -> dict[str, str]:
        """Containers being followed now: ``engine/name`` -> container ID (for /status and tests)."""
        with self._lock:
            return {f"{e}/{n}": f.container_id for (e, n), f in self._followers.items() if f.alive()}

    def _on_engine(self, engine: str, state: EngineState) -> None:
        # Up once listed; down while the stream is broken (a stream not yet opened is no failure).
        self._engine_ok[engine] = state.listed and (state.streaming or state.reconnects == 0)
        self.connected = all(self._engine_ok.values())
        if state.error:
            self._error(state.error)

    def _on_update(self, update: Update) -> None:
        if self.stopping:
            return
        for change in update.changes:
            before, after = change.before, change.after
            if before is not None and after is not None and before.name != after.name:
                self._renamed(before, after)
        if update.full:
            for container in update.snapshot.running(update.engine):
                self.attach(container)
            self._forget(update)
        else:
            for change in update.changes:
                if change.after is not None and change.after.running:
                    self.attach(change.after)

    def _renamed(self, before: WatchedContainer, after: WatchedContainer) -> None:
        """Same container, new name: its follower stops and the new name's carries on from the
        old position (the lines are the same stream), instead of two followers on one container."""
        with self._lock:
            old = self._followers.pop((before.engine, before.name), None)
            pos = self._positions.get((before.engine, before.name))
            if pos is not None:
                self._positions.setdefault((after.engine, after.name), pos)
        if old is not None:
            old.stop()

    def _forget(self, update: Update) -> None:
        """Drop the followers and positions of names no longer on the engine, so short-lived
        containers leave nothing behind. A position is kept until the store has committed it:
        until then, falling back to the store's cursor would repeat lines."""
        names = {c.name for c in update.snapshot.engines.get(update.engine, {}).values()}
        with self._lock:
            for key in [k for k, f in self._followers.items() if k[0] == update.engine and k[1] not in names]:
                if not self._followers[key].alive():
                    del self._followers[key]
            gone = [k for k in self._positions if k[0] == update.engine and k[1] not in names]
        for key in gone:
            pos = self._positions.get(key)
            if pos is not None and self.store.get_cursor(cursor_key(*key)) == pos.encode():
                with self._lock:
                    if self._positions.get(key) == pos and key not in self._followers:
                        del self._positions[key]

    def attach(self, container: WatchedContainer) -> None:
        if self.stopping:
            return
        key = (container.engine, container.name)
        with self._lock:
            current = self._followers.get(key)
            if current is not None and current.alive():
                if current.container_id == container.id:
                    current.rearm.set()  # it may be deciding to exit just as the container restarted
                    return
                current.stop()  # re-created under the same name: the old stream is finished
            follower = _Follower(self, self.inventory.client(container.engine), container)
            self._followers[key] = follower
        follower.start()

    def status(self) -> dict[str, Any]:
        s = super().status()
        s["followed"] = sorted(self.followed())
        s["engines"] = dict(self._engine_ok)
        return s
