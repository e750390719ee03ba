"""A Docker Engine API guard: the only way the watcher reaches ``/var/run/docker.sock``.

Run it in its own container (``python -m watcher.guard_proxy``, see deploy/compose.yaml): it
listens on TCP, forwards to the engine's Unix socket, and lets through exactly the calls the
watcher makes. Everything else is answered ``403`` without touching the engine.

Why not HAProxy (or tecnativa/docker-socket-proxy) with an allow-list? A proxy that matches
bytes cannot see what Docker sees. Docker decodes JSON keys case-insensitively and the last
duplicate wins, so regexes over an exec-create body were talked around (``"cmd"`` repeated after a
newline, ``"Privileged" : true``, a tab, forbidden keys after a 20 KB pad): a root shell in any
container. And no byte matcher can know which *container* a path names, so it allowed inspecting
every container on the host (their environments hold secrets) and restarting any of them.

So this guard:

* needs no request body at all. The watcher no longer uses exec (an Nginx reload is validated by
  the master itself: it keeps its old workers when it refuses a config on HUP, and the watcher
  confirms a reload by worker generations), and none of the remaining calls takes a body. Any
  body, any ``Transfer-Encoding``, ``Upgrade`` or ``Expect`` header is refused; there is no JSON
  to parse, so there is nothing to parse differently from Docker;
* allows an explicit list of (method, path, query keys); unknown or duplicated query keys are
  refused, ``kill`` only with ``signal=HUP``, ``top`` without ``ps_args`` (``ps e`` would print
  process environments);
* for a per-container path, asks the engine (over the socket) for that container's labels and
  refuses it unless it carries *every* pair of one configured ``--allow-label key=value[,key=value]``
  selector (Docker's label-filter semantics: all pairs must match; a repeated ``--allow-label`` is
  another selector, one per role: the replicas, the load balancer). The request
  is then forwarded with the container's full ID in place of what the client wrote, so a rename
  between the check and the call cannot point it at another container;
* rebuilds the request from the parsed parts (method, checked path, checked query, ``Host``,
  ``Content-Length: 0`` on POST, ``Connection: close``) instead of forwarding the client's bytes,
  so no header or framing trick reaches the engine; attach, exec and every other hijacking
  endpoint are simply not on the list. One request per connection; the engine's response
  (including long-lived streams: events, followed logs, stats) is relayed byte for byte.

Standard library only, so the watcher image runs it without extra dependencies.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import select
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = ["ROUTES", "Forward", "Guard", "Refused", "Route", "engine_inspector", "main", "parse_selectors", "serve"]

_VERSION = r"(?P<version>/v[0-9]+\.[0-9]+)?"
_NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)"
_PATH_CHARS = re.compile(r"^/[A-Za-z0-9/_.-]*$")
_HUP = frozenset({"HUP", "SIGHUP"})


@dataclass(frozen=True, slots=True)
class Route:
    """One allowed call: method, path (after the optional ``/vX.Y``), its query keys and value checks."""

    method: str
    path: str  # regex body; ``{name}`` marks a per-container path
    query: frozenset[str] = frozenset()
    required: Mapping[str, frozenset[str]] | None = None  # key -> allowed values (key must be present)
    digits: frozenset[str] = frozenset()  # keys whose value must be a non-negative integer

    @property
    def per_container(self) -> bool:
        return "{name}" in self.path

    def regex(self) -> re.Pattern[str]:
        return re.compile("^" + _VERSION + self.path.replace("{name}", _NAME) + "$")


# What the watcher calls (docker SDK): start-up, inventory, sources, DockerRestarter, ContainerNginxReload.
ROUTES: tuple[Route, ...] = (
    Route("GET", "/_ping"),
    Route("HEAD", "/_ping"),
    Route("GET", "/version"),
    Route("GET", "/containers/json", frozenset({"all", "limit", "size", "filters", "trunc_cmd", "before", "since"})),
    Route("GET", "/events", frozenset({"since", "until", "filters"})),
    Route("GET", "/containers/{name}/json", frozenset({"size"})),
    Route(
        "GET",
        "/containers/{name}/logs",
        frozenset({"follow", "stdout", "stderr", "since", "until", "timestamps", "tail"}),
    ),
    Route("GET", "/containers/{name}/stats", frozenset({"stream", "one-shot"})),
    Route("GET", "/containers/{name}/top"),
    Route("POST", "/containers/{name}/restart", frozenset({"t"}), digits=frozenset({"t"})),
    Route("POST", "/containers/{name}/kill", frozenset({"signal"}), required={"signal": _HUP}),
)
_COMPILED = tuple((route, route.regex()) for route in ROUTES)


class Refused(Exception):
    """A request the guard will not forward; ``status`` is what the client gets (403, or 404/400)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Forward:
    """The request the guard sends to the engine, rebuilt from checked parts."""

    method: str
    target: str  # path + query, exactly as sent


Inspect = Callable[[str], "dict[str, Any] | None"]  # container name/ID -> inspect JSON, None if absent
Selector = tuple[tuple[str, str], ...]  # label pairs a container must carry, all of them


def parse_selectors(values: Sequence[str]) -> tuple[Selector, ...]:
    """``["watcher.enable=true,team=ml", "watcher.role=load-balancer"]`` -> one selector per value,
    each the pairs a container must carry *all* of; a key and a value are required in every pair."""
    out: list[Selector] = []
    for value in values:
        pairs: list[tuple[str, str]] = []
        for pair in value.split(","):
            key, sep, want = pair.strip().partition("=")
            if not sep or not key:
                raise ValueError(f"--allow-label wants key=value[,key=value...], got {value!r}")
            pairs.append((key, want))
        out.append(tuple(pairs))
    if not out:
        raise ValueError("at least one --allow-label key=value is required")
    return tuple(out)


class Guard:
    """The decision: given a parsed request, the :class:`Forward` to send or :class:`Refused`."""

    def __init__(self, selectors: Sequence[Selector], inspect: Inspect) -> None:
        self.selectors = tuple(selectors)
        self.inspect = inspect

    def decide(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> Forward:
        self._check_headers(method, headers)
        path, _, query = target.partition("?")
        if not _PATH_CHARS.match(path) or "//" in path or "/./" in path or "/../" in path or path.endswith("/.."):
            raise Refused(f"path not allowed: {path!r}")
        for route, regex in _COMPILED:
            m = regex.match(path)
            if m is None:
                continue
            if route.method != method:
                continue
            params = self._check_query(route, query)
            version = m.group("version") or ""
            if route.per_container:
                container_id = self._labelled(m.group("name"))
                path = version + route.path.replace("{name}", container_id)
            encoded = urlencode(params)
            return Forward(method, path + ("?" + encoded if encoded else ""))
        raise Refused(f"{method} {path} is not on the watcher's allow-list")

    @staticmethod
    def _check_headers(method: str, headers: Sequence[tuple[str, str]]) -> None:
        names = [k.strip().lower() for k, _ in headers]
        for banned in ("transfer-encoding", "upgrade", "expect", "te", "trailer"):
            if banned in names:
                raise Refused(f"header {banned!r} not allowed (no allowed call takes a body or upgrades)")
        for key, value in headers:
            if key.strip().lower() == "connection" and "upgrade" in value.lower():
                raise Refused("connection upgrades (attach/exec hijacking) are not allowed")
        lengths = [v.strip() for k, v in headers if k.strip().lower() == "content-length"]
        if len(lengths) > 1 or (lengths and lengths[0] != "0"):
            raise Refused("request bodies are not allowed: no call on the allow-list takes one")

    @staticmethod
    def _check_query(route: Route, query: str) -> list[tuple[str, str]]:
        if ";" in query:
            raise Refused("';' in the query string is not allowed")
        try:
            params = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise Refused(f"malformed query string {query!r}") from None
        keys = [k for k, _ in params]
        if len(set(keys)) != len(keys):
            raise Refused(f"duplicate query parameters in {query!r}")
        unknown = set(keys) - route.query
        if unknown:
            raise Refused(f"query parameters not allowed on {route.method} {route.path}: {sorted(unknown)}")
        values = dict(params)
        for key, allowed in (route.required or {}).items():
            if values.get(key) not in allowed:
                raise Refused(f"{route.path} only with {key} in {sorted(allowed)}, got {values.get(key)!r}")
        for key in route.digits:
            if key in values and not values[key].isdigit():
                raise Refused(f"{key} must be a non-negative integer, got {values[key]!r}")
        return params

    def _labelled(self, name: str) -> str:
        """The full ID of container ``name`` if it carries an allowed label, else :class:`Refused`."""
        attrs = self.inspect(name)
        if attrs is None:
            raise Refused(f"no such container: {name}", status=404)
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if not any(all(labels.get(key) == want for key, want in selector) for selector in self.selectors):
            wanted = " or ".join(",".join(f"{k}={v}" for k, v in selector) for selector in self.selectors)
            raise Refused(f"container {name} does not carry {wanted}")
        container_id = str(attrs.get("Id", ""))
        if not re.fullmatch(r"[0-9a-f]{64}", container_id):
            raise Refused(f"engine returned an unexpected ID for {name}: {container_id!r}", status=502)
        return container_id


# ------------------------------------------------------------------------------------- plumbing


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def engine_inspector(socket_path: str, timeout_s: float = 10.0) -> Inspect:
    """An :data:`Inspect` that asks the engine behind ``socket_path`` (the guard's own lookups)."""

    def inspect(name: str) -> dict[str, Any] | None:
        conn = _UnixHTTPConnection(socket_path, timeout_s)
        try:
            conn.request("GET", f"/containers/{name}/json", headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            raise Refused(f"engine unreachable: {exc}", status=502) from None
        finally:
            conn.close()
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise Refused(f"engine answered {resp.status} inspecting {name}", status=502)
        data = json.loads(body)
        return data if isinstance(data, dict) else None

    return inspect


def _handler(guard: Guard, socket_path: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # for reading the request; lifted before a response is relayed

        def _any(self) -> None:
            self.close_connection = True
            try:
                if self.request_version != "HTTP/1.1":
                    raise Refused(f"only HTTP/1.1, got {self.request_version}", status=400)
                forward = guard.decide(self.command, self.path, list(self.headers.items()))
            except Refused as exc:
                self._refuse(exc)
                return
            self.log_message('allow "%s %s" -> %s', self.command, self.path, forward.target)
            self._relay(forward)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _any

        def _refuse(self, exc: Refused) -> None:
            self.log_message('refuse "%s %s": %s', self.command, self.path, exc)
            body = json.dumps({"message": f"docker guard: {exc}"}).encode()
            self.send_response(exc.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _relay(self, forward: Forward) -> None:
            head = f"{forward.method} {forward.target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
            if forward.method == "POST":
                head += "Content-Length: 0\r\n"
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(socket_path)
                upstream.sendall((head + "\r\n").encode("ascii"))
            except OSError as exc:
                upstream.close()
                self._refuse(Refused(f"engine unreachable: {exc}", status=502))
                return
            client = self.connection
            client.settimeout(None)
            # One buffer per relay, read into: a log stream relays a line at a time, and a fresh
            # 64 KiB bytes object per line was most of this proxy's cost at fleet size.
            buffer = memoryview(bytearray(65536))
            try:
                while True:
                    readable, _, _ = select.select([upstream, client], [], [])
                    if client in readable and not client.recv(1, socket.MSG_PEEK):
                        return  # the client went away (e.g. stopped following events)
                    if upstream in readable:
                        n = upstream.recv_into(buffer)
                        if not n:
                            return
                        client.sendall(buffer[:n])
                    elif client in readable:
                        client.recv(65536)  # pipelined bytes after our one request: discarded
            except OSError:
                return
            finally:
                upstream.close()

    return Handler


def serve(host: str, port: int, socket_path: str, selectors: Sequence[Selector]) -> ThreadingHTTPServer:
    """A bound (not yet serving) guard; call ``serve_forever`` on it."""
    guard = Guard(selectors, engine_inspector(socket_path))
    server = ThreadingHTTPServer((host, port), _handler(guard, socket_path))
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m watcher.guard_proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default=os.environ.get("GUARD_LISTEN", "127.0.0.1:2375"), help="host:port")
    parser.add_argument("--socket", default=os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock"))
    parser.add_argument(
        "--allow-label",
        action="append",
        default=None,
        help="key=value[,key=value...]: labels a container must carry, all of them, for inspect/logs/stats/top/"
        "restart/kill (repeatable: one selector per role, any selector); "
        "default from GUARD_ALLOW_LABELS (whitespace-separated)",
    )
    args = parser.parse_args(argv)
    labels = args.allow_label if args.allow_label is not None else os.environ.get("GUARD_ALLOW_LABELS", "").split()
    try:
        selectors = parse_selectors(labels)
    except ValueError as exc:
        parser.error(str(exc))
    host, _, port = str(args.listen).rpartition(":")
    server = serve(host or "0.0.0.0", int(port), str(args.socket), selectors)
    print(f"docker guard on {args.listen} -> {args.socket}, containers with {selectors}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 in a container ignores it otherwise
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
