"""The watcher's own HTTP API: health, readiness, Prometheus metrics, status and guarded mutations.

Who may read what. ``/healthz``, ``/readyz`` and ``/metrics`` are always open: the container
health check, Kubernetes probes and the Prometheus scrape cannot carry a secret, and they show
only counts, thread and source liveness. ``/status`` names every container, engine, silence and
incident, so it needs ``Authorization: Bearer <WATCHER_API_TOKEN>`` whenever the API listens on
anything but loopback (``protect_status``); without a token configured it is then refused. ``/`` is
the same document as an HTML page (:mod:`watcher.statuspage`) under the same rule.
Mutations -- silence, pause, resume, dry-run toggle -- change what the watcher does to production
and always need the token; with none configured they are refused outright.

The server assumes hostile clients (it can listen on a network). It is http.server's request
parser under our own connection handling, not ``ThreadingHTTPServer`` (a thread per connection,
forever) and not a new dependency (cheroot, waitress): the API is five small endpoints, and a
web server in the dependency set is more code to keep safe than the hundred lines below.

* A connection costs no thread until its first bytes arrive: the accepting thread waits on all of
  them with a selector, drops those silent for ``idle_timeout_s``, and past ``max_pending``
  drops the longest-waiting one to make room.
* At most ``workers`` requests are served at once; one more is answered 503 at once.
* Every receive has ``read_timeout_s``, and a whole request must arrive within
  ``request_deadline_s`` (a client dripping a byte at a time is cut off).
* One request per connection (HTTP/1.0), bodies only with a valid ``Content-Length`` up to
  ``max_body`` (411, 400, 413 otherwise), mutations only as ``application/json`` (415), JSON
  without NaN or Infinity. Every error is a JSON body with its status code.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from watcher import statuspage

log = logging.getLogger("watcher.api")
MAX_BODY = 64 * 1024
_LENGTH = re.compile(r"[0-9]{1,12}")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ApiLimits:
    """How much any one client may hold of the API, and for how long."""

    idle_timeout_s: float = 5.0  # a connection that sends nothing is closed after this
    read_timeout_s: float = 5.0  # each receive while reading a request
    request_deadline_s: float = 10.0  # the whole request, from the first byte to the last
    handler_deadline_s: float = 30.0  # the answer (a mutation waits up to 10 s for the decision thread)
    max_pending: int = 256  # connections waiting for their first byte (no thread each)
    workers: int = 8  # requests served at once
    max_body: int = MAX_BODY


class ApiError(Exception):
    """A request refused with ``code``; the message is the JSON body's ``error``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def positive_seconds(body: Mapping[str, Any], name: str, default: float, maximum: float) -> float:
    """``body[name]`` as a finite number of seconds in (0, maximum]; a string, a bool, NaN or
    infinity is refused (a NaN silence would match every target and never show as expired)."""
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{name}: a number of seconds, got {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or not 0 < seconds <= maximum:
        raise ApiError(400, f"{name}: more than 0 and at most {maximum:g} seconds")
    return seconds


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


class Api:
    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        ready: Callable[[], tuple[bool, dict[str, Any]]],
        status: Callable[[], dict[str, Any]],
        mutations: dict[str, Handler],
        token: str | None,
        *,
        protect_status: bool = False,
        limits: ApiLimits | None = None,
        incident: Callable[[int], dict[str, Any] | None] | None = None,
    ) -> None:
        self.registry = registry
        self.health = health
        self.ready = ready
        self.status = status
        self.mutations = mutations
        self.protect_status = protect_status
        self.incident = incident
        self.limits = limits or ApiLimits()
        self._token = token
        api = self

        class _Handler(BaseHTTPRequestHandler):
            server_version = "serving-watcher"
            sys_version = ""  # no Python version for a scanner
            protocol_version = "HTTP/1.0"  # one request per connection: the deadlines are per connection
            default_request_version = "HTTP/1.0"  # never answer as HTTP/0.9 (a body without status or headers)
            timeout = self.limits.read_timeout_s

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("api %s", format % args)

            def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
                """http.server's own refusals (bad request line, headers too long, no such method) as JSON."""
                self.close_connection = True
                if not self.request_version.startswith("HTTP/1"):  # a line too long to parse has none
                    self.request_version = self.default_request_version
                api._json(self, code, {"error": message or HTTPStatus(code).phrase, "code": code})

            def do_GET(self) -> None:
                api._guarded(self, api._get)

            def do_POST(self) -> None:
                api._guarded(self, api._post)

        self._handler_class = _Handler
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.create_server(address, family=family, backlog=128)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._pending: dict[socket.socket, float] = {}  # waiting for a first byte -> when they are dropped
        self._active: dict[socket.socket, float] = {}  # being served -> when they are cut off
        self._lock = threading.Lock()
        self._busy = 0
        self._pool = ThreadPoolExecutor(max_workers=self.limits.workers, thread_name_prefix="api")
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.rejected = 0  # connections answered 503 because every worker was busy
        self.dropped = 0  # connections closed idle, evicted, or cut off at a deadline

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> Api:
        self._thread = threading.Thread(target=self._serve, name="api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for conn in list(self._active):
                _shutdown(conn)
        for conn in list(self._pending):
            conn.close()
        self._pending.clear()
        self._selector.close()
        self._listener.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- connections -------------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._closed.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                if key.fileobj is self._listener:
                    self._accept()
                elif isinstance(key.fileobj, socket.socket):
                    self._dispatch(key.fileobj)
            self._expire(time.monotonic())

    def _accept(self) -> None:
        for _ in range(64):  # then let the others be served
            try:
                conn, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: keep serving the ones we have
                log.warning("api: cannot accept a connection", extra={"fields": {"error": str(exc)}})
                return
            conn.setblocking(False)
            if len(self._pending) >= self.limits.max_pending:
                oldest = next(iter(self._pending))  # dicts keep insertion order: the longest waiting
                self._drop(oldest)
            self._pending[conn] = time.monotonic() + self.limits.idle_timeout_s
            self._selector.register(conn, selectors.EVENT_READ)

    def _drop(self, conn: socket.socket) -> None:
        self._pending.pop(conn, None)
        self._selector.unregister(conn)
        conn.close()
        self.dropped += 1

    def _dispatch(self, conn: socket.socket) -> None:
        """The first bytes arrived: hand the connection to a worker, or answer 503 when all are busy."""
        self._pending.pop(conn, None)
        self._selector.unregister(conn)
        with self._lock:
            free = self._busy < self.limits.workers
            if free:
                self._busy += 1
        if not free:
            self.rejected += 1
            body = json.dumps({"error": "too many requests at once; try again", "code": 503}).encode()
            head = f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            try:
                conn.send(head.encode() + b"\r\nRetry-After: 1\r\nConnection: close\r\n\r\n" + body)
                conn.recv(65536)  # what has arrived of the request: unread, it would reset the answer away
            except OSError:
                pass
            conn.close()
            return
        self._pool.submit(self._handle, conn)

    def _expire(self, now: float) -> None:
        for conn, deadline in list(self._pending.items()):
            if deadline <= now:
                self._drop(conn)
        with self._lock:
            late = [conn for conn, deadline in self._active.items() if deadline <= now]
            for conn in late:
                del self._active[conn]
        for conn in late:
            _shutdown(conn)  # the worker's blocked receive returns; the worker closes it
            self.dropped += 1

    def _handle(self, conn: socket.socket) -> None:
        with self._lock:
            self._active[conn] = time.monotonic() + self.limits.request_deadline_s
        try:
            conn.setblocking(True)
            conn.settimeout(self.limits.read_timeout_s)
            # the handler never looks at its server: this object stands in for socketserver's
            self._handler_class(conn, conn.getpeername(), self)  # type: ignore[arg-type]
        except Exception as exc:  # the client went away mid-request: nothing to answer
            log.debug("api connection ended", extra={"fields": {"error": repr(exc)}})
        finally:
            with self._lock:
                self._active.pop(conn, None)
                self._busy -= 1
            _linger_close(conn)

    def _answering(self, h: BaseHTTPRequestHandler) -> None:
        """The request is read: from here the handler's deadline applies, not the reading one."""
        conn = h.request
        with self._lock:
            if isinstance(conn, socket.socket) and conn in self._active:
                self._active[conn] = time.monotonic() + self.limits.handler_deadline_s

    # -- handlers ------------------------------------------------------------------------------
    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        code: int,
        body: bytes,
        ctype: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h: BaseHTTPRequestHandler, code: int, doc: Any) -> None:
        self._send(h, code, (json.dumps(doc, indent=1, default=str) + "\n").encode())

    def _guarded(self, h: BaseHTTPRequestHandler, serve: Callable[[BaseHTTPRequestHandler], None]) -> None:
        """Every outcome an answer: a refusal its status, a bug 500 (the details go to the log)."""
        try:
            serve(h)
        except ApiError as exc:
            self._json(h, exc.code, {"error": str(exc), "code": exc.code})
        except OSError:
            raise  # the client is gone (or timed out): there is no one to answer
        except Exception:
            log.exception("api request failed", extra={"fields": {"path": h.path.split("?", 1)[0]}})
            self._json(h, 500, {"error": "internal error; the watcher's log has the details", "code": 500})

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        self._answering(h)
        path = h.path.split("?", 1)[0]
        if path == "/healthz":
            ok, detail = self.health()
            self._json(h, 200 if ok else 503, {"ok": ok, **detail})
        elif path == "/readyz":
            ok, detail = self.ready()
            self._json(h, 200 if ok else 503, {"ready": ok, **detail})
        elif path == "/metrics":
            self._send(h, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/status":
            if self.protect_status:
                self._authorise(h, "/status is not public on this address")
            self._json(h, 200, self.status())
        elif path == "/":
            if self.protect_status:  # the page shows what /status shows: the same rule
                self._authorise(h, "the status page is not public on this address")
            page = statuspage.render(self.status(), time.time()).encode()
            self._send(h, 200, page, statuspage.CONTENT_TYPE, statuspage.HEADERS)
        elif path.startswith("/incidents/") and self.incident is not None:
            if self.protect_status:  # an incident names what /status names: the same rule
                self._authorise(h, "/incidents is not public on this address")
            number = path.removeprefix("/incidents/")
            if not number.isdigit() or len(number) > 18:
                raise ApiError(404, f"no such incident: {number[:40]!r}")
            doc = self.incident(int(number))
            if doc is None:
                raise ApiError(404, f"no such incident: {number}")
            self._json(h, 200, doc)
        else:
            raise ApiError(404, f"no such endpoint: {path}")

    def _authorise(self, h: BaseHTTPRequestHandler, what: str) -> None:
        if not self._token:
            raise ApiError(HTTPStatus.FORBIDDEN, f"{what}: set WATCHER_API_TOKEN and send it as a bearer token")
        header = h.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token.encode()):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")

    def _body(self, h: BaseHTTPRequestHandler) -> dict[str, Any]:
        """The request's JSON object, read only when its framing is exact."""
        if h.headers.get("Transfer-Encoding") is not None:
            raise ApiError(411, "send the body with a Content-Length (Transfer-Encoding is not accepted)")
        lengths = {v.strip() for v in h.headers.get_all("Content-Length") or []}
        if len(lengths) > 1 or not all(_LENGTH.fullmatch(v) for v in lengths):
            raise ApiError(400, "Content-Length: one non-negative integer")
        length = int(lengths.pop()) if lengths else 0
        if length > self.limits.max_body:
            raise ApiError(413, f"body larger than {self.limits.max_body} bytes")
        ctype = h.headers.get("Content-Type")
        if (length or ctype is not None) and (ctype or "").split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "Content-Type: application/json")
        try:
            raw = h.rfile.read(length) if length else b""
        except TimeoutError:
            raise ApiError(408, "the body did not arrive in time") from None
        if len(raw) != length:
            raise ApiError(400, "the body is shorter than its Content-Length")
        self._answering(h)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"body: not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body: expected a JSON object")
        return body

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0].strip("/")
        handler = self.mutations.get(path)
        if handler is None:
            raise ApiError(404, f"no such endpoint: /{path}")
        self._authorise(h, "mutations are disabled")
        body = self._body(h)
        try:
            self._json(h, 200, handler(body))
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, str(exc)) from None
        except (TimeoutError, RuntimeError) as exc:  # the decision thread is busy or not running
            raise ApiError(503, str(exc)) from None


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the client
        conn.shutdown(socket.SHUT_RDWR)


def _linger_close(conn: socket.socket) -> None:
    """Close after the answer has left: stop sending, read what the client still sends (briefly),
    then close -- closing with unread bytes resets the connection, and the client may lose the
    answer (a 413 to a client still uploading)."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(0.2)
        for _ in range(16):
            if not conn.recv(65536):
                break
    except OSError:
        pass
    finally:
        conn.close()
