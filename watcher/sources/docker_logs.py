"""Follow the logs of selected containers on one or more Docker engines, losing and repeating nothing.

Selection is by label (default ``watcher.enable=true``), made by the inventory
(:mod:`watcher.inventory`): a container is attached when the inventory shows it running (at start,
on its ``start`` event, and on every rescan, which repairs anything an event missed). One thread
reads every stream (the mux, below); a stream ends when its container stops, and a worker follows
again at once if the container is running again (``docker restart``).

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

import contextlib
import io
import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import docker

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
_READS_PER_ROUND = 4  # a stream with a backlog yields to the others after 1 MiB per round
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


class ChunkedDecoder:
    """HTTP/1.1 chunked transfer decoding, fed whatever the socket gave (Docker streams logs so).

    The mux reads the raw socket, below http.client, so the framing is undone here. A chunk-size
    line longer than :attr:`MAX_SIZE_LINE` is a broken stream, not something to buffer.
    """

    MAX_SIZE_LINE = 1024

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0  # payload bytes still due in the current chunk
        self._crlf = False  # the CRLF that ends a chunk's payload is due
        self.done = False  # the last (zero-size) chunk arrived

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        buf += data
        out = bytearray()
        pos = 0
        while not self.done:
            if self._left:
                take = min(self._left, len(buf) - pos)
                out += buf[pos : pos + take]
                pos += take
                self._left -= take
                if self._left:
                    break
                self._crlf = True
            if self._crlf:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self._crlf = False
            nl = buf.find(b"\r\n", pos, pos + self.MAX_SIZE_LINE)
            if nl < 0:
                if len(buf) - pos >= self.MAX_SIZE_LINE:
                    raise ValueError("chunked stream: no chunk size within 1 KiB")
                break
            size = int(bytes(buf[pos:nl]).split(b";", 1)[0], 16)
            pos = nl + 2
            if size == 0:
                self.done = True
            self._left = size
        del buf[:pos]
        return bytes(out)


class FrameSplitter:
    """Docker's multiplexed log stream: ``(stream, payload)`` per 8-byte-headed frame, across reads."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[str, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 8:
            kind, length = struct.unpack_from(">BxxxL", buf, pos)
            if end - pos - 8 < length:
                break
            if length:
                out.append((_STREAMS.get(kind, "stdout"), bytes(buf[pos + 8 : pos + 8 + length])))
            pos += 8 + length
        del buf[:pos]
        return out


# -- one container's stream ------------------------------------------------------------------------
class _Follower:
    """One container's log stream: opened (and re-opened) by a worker, read by the mux.

    The worker owns the follower until it hands the socket to the mux (``_StreamMux.add``, under
    the mux's lock), the mux from then until the stream ends; then a worker decides whether to
    follow again (the container restarted) or to finish (``alive`` becomes False).
    """

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
        self._done = threading.Event()
        self._stopped = False
        self.lines = 0
        self.sock: socket.socket | None = None
        self._res: Any = None
        self._new_stream(None, chunked=False)

    def _new_stream(self, start: LogCursor | None, chunked: bool) -> None:
        """The parsing state of one stream, fresh for each (re)open."""
        self._tracker = CursorTracker(start)
        self._chunks = ChunkedDecoder() if chunked else None
        self._frames = FrameSplitter()
        self._splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}

    def start(self) -> None:
        self.owner._submit(self._follow)

    def stop(self) -> None:
        self._stopped = True
        if self.owner._mux is not None:  # the mux closes the socket: a closed fd must leave its selector first
            self.owner._mux.remove(self)

    def alive(self) -> bool:
        return not self._done.is_set()

    # -- in a worker
    def _follow(self) -> None:
        while True:
            if self._stopped or self.owner.stopping:
                self._done.set()
                return
            self.rearm.clear()
            try:
                self._open()
                return  # the mux has it now
            except Exception as exc:
                if not (self._stopped or self.owner.stopping):
                    self.owner._error(f"{self.engine}/{self.name}: log stream failed: {exc}")
            if not self._follow_again():
                self._done.set()
                return

    def _follow_again(self) -> bool:
        """The stream ended when the container stopped; follow again if it runs (again) already."""
        if self._stopped or self.owner.stopping:
            return False
        time.sleep(0.1)
        try:
            running = bool(self.client.api.inspect_container(self.container_id)["State"]["Running"])
        except Exception:
            running = False
        return (running or self.rearm.is_set()) and not (self._stopped or self.owner.stopping)

    def _ended(self) -> None:
        if self._follow_again():
            self._follow()
        else:
            self._done.set()

    def _open(self) -> None:
        api = self.client.api
        start = self.owner._position(self.engine, self.name)
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "timestamps": 1, "follow": 1, "tail": "all"}
        if start is not None:
            params["since"] = since_param(start.ts_ns)
        elif self.owner.backfill_s is not None:
            params["since"] = since_param(int((time.time() - self.owner.backfill_s) * 1e9))
        res = api._get(api._url("/containers/{0}/logs", self.container_id), params=params, stream=True)
        api._raise_for_status(res)
        raw = api._get_raw_response_socket(res)
        sock = raw if isinstance(raw, socket.socket) else getattr(raw, "_sock", None)
        if not isinstance(sock, socket.socket):
            res.close()
            raise OSError(f"the log stream is not a socket ({type(raw).__name__})")
        sock.setblocking(False)
        http = getattr(res.raw, "_fp", None)  # http.client's response under urllib3's
        self._new_stream(start, chunked=bool(getattr(http, "chunked", False)))
        fp = getattr(http, "fp", None)
        self._res, self.sock = res, sock
        out: list[Envelope] = []
        if isinstance(fp, io.BufferedReader):
            # What http.client read past the headers is in its buffer, where no select can see it.
            self._feed(fp.read1(_READ_SIZE) or b"", out)
        if out:
            self.owner.queue.put_many(out)
        mux = self.owner._mux
        if self._stopped or mux is None:
            self._close()
            raise OSError("stopped")
        mux.add(self)

    # -- in the mux
    def read_ready(self, out: list[Envelope], buffer: memoryview) -> bool:
        """Read what the socket has (a bounded amount per round); False when the stream ended.

        ``buffer``: the mux's one read buffer. ``recv(256 KiB)`` would allocate (and map) 256 KiB
        per call to return the one line a stream wrote since the last round."""
        sock = self.sock
        assert sock is not None
        for _ in range(_READS_PER_ROUND):
            try:
                data = bytes(buffer[: sock.recv_into(buffer)])
            except (BlockingIOError, ssl.SSLWantReadError):
                return True
            except OSError as exc:
                if not self._stopped:
                    self.owner._error(f"{self.engine}/{self.name}: log stream failed: {exc}")
                return False
            if not data:
                return False
            try:
                self._feed(data, out)
            except ValueError as exc:
                self.owner._error(f"{self.engine}/{self.name}: log stream broken: {exc}")
                return False
            if self._chunks is not None and self._chunks.done:
                return False
            if len(data) < _READ_SIZE and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return True
        return True

    def finish(self, out: list[Envelope]) -> None:
        """The stream ended: the unfinished last lines, then a worker decides what next."""
        for kind, sp in self._splitters.items():
            rest = sp.flush()
            if rest is not None and not self._stopped:
                self._emit(kind, rest[0], rest[1], out)
        self._close()
        self.owner._submit(self._ended)

    def _close(self) -> None:
        res, self._res, self.sock = self._res, None, None
        if res is not None:
            try:
                res.close()
            except Exception as exc:  # closing a half-dead socket may fail; the stream is over anyway
                log.debug("closing log stream of %s: %s", self.name, exc)

    def _feed(self, data: bytes, out: list[Envelope]) -> None:
        if self._chunks is not None:
            data = self._chunks.feed(data)
        if not data:
            return
        frames = [("stdout", data)] if self.tty else self._frames.feed(data)
        before = len(out)
        for kind, payload in frames:
            for raw, truncated in self._splitters[kind].feed(payload):
                self._emit(kind, raw, truncated, out)
        if len(out) > before and self._tracker.cursor is not None:
            self.owner._advance(self.engine, self.name, self._tracker.cursor)

    def _emit(self, kind: str, raw: bytes, truncated: bool, out: list[Envelope]) -> None:
        parts = split_timestamp(raw)
        if parts is None:
            return  # without a timestamp there is no cursor; Docker always sends one when asked
        ts, body = parts
        tracker = self._tracker
        cursor = tracker.accept(ts)
        if cursor is None:
            return
        message, truncated = cap_message(body, truncated, self.owner.max_line_bytes)
        fields = {"stream": kind, "truncated": "1"} if truncated else {"stream": kind}
        record = LogRecord(target=self.target, ts=tracker.last_ns / 1e9, message=message, fields=fields)
        out.append(Envelope(record, self.source_key, (self.cursor_key, cursor.encode())))
        self.lines += 1


class _StreamMux:
    """One thread reads every followed container's log stream.

    Why one: a fleet's lines arrive one at a time, and a thread per container woke (and took the
    GIL, and woke the engine) once per line — at 48 replicas that was half the watcher's CPU. This
    thread sleeps ``gather_s`` after each round that read something, so the next round finds what
    every stream wrote meanwhile and hands it to the queue in one ``put_many``. A line waits at
    most ``gather_s`` longer; Docker buffers meanwhile, it never drops.

    Every socket is closed here, after it left the selector: a descriptor closed elsewhere could be
    reused by the next stream before the selector forgot it.
    """

    def __init__(self, owner: DockerLogsSource, gather_s: float) -> None:
        self.owner = owner
        self.gather_s = gather_s
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._changes: list[tuple[bool, _Follower]] = []  # (add?, follower), in order
        self._stopped = False
        self._buffer = memoryview(bytearray(_READ_SIZE))  # this thread's only: one read at a time
        self.thread = threading.Thread(target=self._run, name="logs", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def add(self, follower: _Follower) -> None:
        self._change(True, follower)

    def remove(self, follower: _Follower) -> None:
        self._change(False, follower)

    def _change(self, add: bool, follower: _Follower) -> None:
        with self._lock:
            self._changes.append((add, follower))
        with contextlib.suppress(OSError):  # the pipe is full (a wake-up is due anyway), or stopped
            self._wake_w.send(b"x")

    def stop(self) -> None:
        self._stopped = True
        if self.thread.ident is None:  # never started: nothing was registered
            self._close_selector()
            return
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self.thread.join(timeout=5)

    def _close_selector(self) -> None:
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _apply(self) -> None:
        with self._lock:
            changes, self._changes = self._changes, []
        for add, follower in changes:
            sock = follower.sock
            registered = sock is not None and sock.fileno() >= 0 and self._registered(sock)
            if add and (follower._stopped or self._stopped):
                follower._close()
                follower._done.set()
            elif add and sock is not None and not registered:
                self._sel.register(sock, selectors.EVENT_READ, follower)
            elif not add and registered and sock is not None:
                self._sel.unregister(sock)
                follower._close()
                follower._done.set()  # stopped: no worker will follow it again

    def _registered(self, sock: socket.socket) -> bool:
        try:
            self._sel.get_key(sock)
            return True
        except KeyError:
            return False

    def _run(self) -> None:
        try:
            while not self._stopped:
                self._apply()
                events = self._sel.select(timeout=1.0)
                began = time.monotonic()
                out: list[Envelope] = []
                for key, _ in events:
                    follower = key.data
                    if follower is None:
                        self._drain_wake()
                        continue
                    assert isinstance(follower, _Follower)
                    if not follower.read_ready(out, self._buffer):
                        self._sel.unregister(key.fileobj)
                        follower.finish(out)
                if out:
                    self.owner.queue.put_many(out)
                    rest = self.gather_s - (time.monotonic() - began)
                    if rest > 0 and not self._stopped:
                        time.sleep(rest)
        finally:
            self._apply()
            for key in list(self._sel.get_map().values()):
                if isinstance(key.data, _Follower):
                    self._sel.unregister(key.fileobj)
                    key.data._close()
                    key.data._done.set()
            self._close_selector()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass


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
        gather_s: float = 0.05,
    ) -> None:
        """``backfill_s``: how far back to read a container that has no cursor yet (None = all of it).
        ``inventory``: the watcher's shared one; without it (``engines``, ``label_selector``,
        ``service_label`` and ``rescan_s`` then describe it) the source keeps a private one.
        ``gather_s``: how long the reader lets every stream gather lines between rounds."""
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
        self.gather_s = gather_s
        self._mux: _StreamMux | None = None  # both made by start: a stopped pair is closed for good
        self._workers: ThreadPoolExecutor | None = None

    def _submit(self, task: Callable[[], None]) -> None:
        if self.stopping or self._workers is None:
            return
        with contextlib.suppress(RuntimeError):  # shut down: the source is stopping
            self._workers.submit(task)

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
        self._mux = _StreamMux(self, self.gather_s)
        # Opening a stream and deciding whether to follow again are blocking Docker calls: a few
        # workers make them, so the one reader never waits on an engine.
        self._workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="logs-open")
        self._mux.start()
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
        if self._mux is not None:
            self._mux.stop()
        if self._workers is not None:
            self._workers.shutdown(wait=True, cancel_futures=True)
        for f in followers:  # nothing runs for them any more: a stream opened meanwhile is closed here
            f._close()
            f._done.set()
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
