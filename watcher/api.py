"""The watcher's own HTTP API: health, readiness, Prometheus metrics, status and guarded mutations.

Read endpoints are open (they are on a loopback address by default). Mutations — silence, pause,
resume, dry-run toggle — change what the watcher does to production and need
``Authorization: Bearer <WATCHER_API_TOKEN>``; with no token configured they are refused outright.
Request bodies are small JSON documents, capped in size.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("watcher.api")
MAX_BODY = 64 * 1024

Handler = Callable[[dict[str, Any]], dict[str, Any]]


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
    ) -> None:
        self.registry = registry
        self.health = health
        self.ready = ready
        self.status = status
        self.mutations = mutations
        self._token = token
        api = self

        class _Handler(BaseHTTPRequestHandler):
            server_version = "serving-watcher"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("api %s", format % args)

            def do_GET(self) -> None:
                api._get(self)

            def do_POST(self) -> None:
                api._post(self)

        self.server = ThreadingHTTPServer(address, _Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> Api:
        self._thread = threading.Thread(target=self.server.serve_forever, name="api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- handlers ------------------------------------------------------------------------------
    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "application/json") -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h: BaseHTTPRequestHandler, code: int, doc: Any) -> None:
        self._send(h, code, (json.dumps(doc, indent=1, default=str) + "\n").encode())

    def _get(self, h: BaseHTTPRequestHandler) -> None:
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
            self._json(h, 200, self.status())
        else:
            self._json(h, 404, {"error": f"no such endpoint: {path}"})

    def _authorised(self, h: BaseHTTPRequestHandler) -> tuple[bool, int, str]:
        if not self._token:
            return False, HTTPStatus.FORBIDDEN, "mutations are disabled: set WATCHER_API_TOKEN"
        header = h.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token.encode()):
            return False, HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token"
        return True, 200, ""

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0].strip("/")
        handler = self.mutations.get(path)
        if handler is None:
            self._json(h, 404, {"error": f"no such endpoint: /{path}"})
            return
        ok, code, why = self._authorised(h)
        if not ok:
            self._json(h, code, {"error": why})
            return
        length = int(h.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._json(h, 413, {"error": f"body larger than {MAX_BODY} bytes"})
            return
        raw = h.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            self._json(h, 200, handler(body))
        except (ValueError, KeyError, TypeError) as exc:
            self._json(h, 400, {"error": str(exc)})
