"""Which parser a line needs, when the source did not say.

:func:`detect` looks at the first bytes only (plus a few C-speed substring tests for formats
whose marker is not at the start: kernel, gRPC, tracebacks), so it costs far less than parsing.
Per-line detection can flap on a container whose log mixes shapes (a traceback inside a
gunicorn log), so :class:`StickyDetector` keeps one guess per container: once ``agree``
consecutive lines detect the same kind it sticks, lines that kind's parser rejects are parsed
by per-line detection, and ``release`` consecutive rejections drop the guess.
"""

from __future__ import annotations

from watcher.parsers import docker_events, grpc, jsonlog, kernel, nginx, python_servers, tfserving
from watcher.parsers.base import FunctionParser, Parsed, Parser

RAW = "raw"

_REGISTERED: tuple[Parser, ...] = (
    FunctionParser(tfserving.KIND, tfserving.parse),
    FunctionParser(nginx.KIND, nginx.parse),
    FunctionParser(python_servers.GUNICORN, python_servers.parse_gunicorn),
    FunctionParser(python_servers.UVICORN, python_servers.parse_uvicorn),
    FunctionParser(python_servers.PYTHON, python_servers.parse_traceback),
    FunctionParser(docker_events.KIND, docker_events.parse),
    FunctionParser(kernel.KIND, kernel.parse),
    FunctionParser(grpc.KIND, grpc.parse),
    FunctionParser(jsonlog.KIND, jsonlog.parse),
)
PARSERS: dict[str, Parser] = {p.name: p for p in _REGISTERED}
if len(PARSERS) != len(_REGISTERED):  # two formats under one name: one would silently shadow the other
    raise RuntimeError(f"duplicate parser names in {[p.name for p in _REGISTERED]}")
KINDS = (*PARSERS, RAW)

_UVICORN_PREFIXES = ("INFO:     ", "ERROR:    ", "WARNING:  ", "DEBUG:    ", "CRITICAL: ", "TRACE:    ")
_GUNICORN_BARE_PREFIXES = ("[INFO] ", "[ERROR] ", "[WARNING] ", "[DEBUG] ", "[CRITICAL] ")
# nginx's context trailer after an upstream action (ngx_http_log_error_handler), when a shipper
# dropped the "date [level] pid#tid: *conn " header
_NGINX_HEADERLESS = (" upstream, client: ",)
_KERNEL_MARKERS = ("out of memory: ", "oom-kill:", "invoked oom-killer", "Killed process ", "oom_reaper:")


def detect(line: str) -> str:
    """The kind of parser ``line`` most likely needs (``"raw"`` if none)."""
    head = line[:40]
    first = head[:1]
    if first == "{":
        return jsonlog.KIND
    if first.isdigit():
        if head[4:5] == "/" and head[10:11] == " ":
            return nginx.KIND
        if head[4:5] == "-":
            if head[10:11] == "T":
                return docker_events.KIND
            if head[19:20] in (".", ":"):
                return tfserving.KIND
            if head[19:21] == " [":
                return python_servers.GUNICORN
    elif first == "[":
        if head.startswith(("[evhttp_server", "[libprotobuf ")):
            return tfserving.KIND
        if (head[1:5].isdigit() and head[5:6] == "-") or head.startswith(_GUNICORN_BARE_PREFIXES):
            return python_servers.GUNICORN
        close = head.find("] ")
        if 2 < close < 10 and head[1:close] in nginx.LEVEL_WORDS:
            return nginx.KIND
    elif first in ("I", "W", "E", "F") and (
        (head[1:5].isdigit() and head[5:6] == " ") or (head[1:2] == " " and line.find(".cc:", 0, 600) > 0)
    ):
        return tfserving.KIND
    elif head.startswith(_UVICORN_PREFIXES):
        return python_servers.UVICORN
    if "StatusCode." in line or "RpcError" in head or head.lstrip().startswith('details = "'):
        return grpc.KIND
    if any(marker in line for marker in _KERNEL_MARKERS):
        return kernel.KIND
    stripped = head.lstrip()
    if stripped.startswith("Traceback (") or (":" in line and python_servers.parse_traceback(line[:300]) is not None):
        return python_servers.PYTHON
    if '] "' in line and " - " in head:
        return nginx.KIND
    if any(marker in line for marker in _NGINX_HEADERLESS):
        return nginx.KIND
    return RAW


def parse(line: str, kind: str | None = None) -> Parsed:
    """Parse with the declared ``kind`` (else the detected one); never fails: ``raw`` at worst."""
    chosen = kind or detect(line)
    parser = PARSERS.get(chosen)
    parsed = parser(line) if parser is not None else None
    if parsed is None and kind is not None:
        auto = PARSERS.get(detect(line))
        parsed = auto(line) if auto is not None else None
    return parsed if parsed is not None else Parsed(RAW, line)


class StickyDetector:
    """One container's running guess of its log format (see the module docstring)."""

    def __init__(self, agree: int = 8, release: int = 64) -> None:
        self.agree = agree
        self.release = release
        self.kind: str | None = None
        self._candidate = RAW
        self._streak = 0
        self._misses = 0

    def parse(self, line: str) -> Parsed:
        """Parse one line, updating the guess."""
        if self.kind is not None:
            parsed = PARSERS[self.kind](line)
            if parsed is not None:
                self._misses = 0
                return parsed
            self._misses += 1
            if self._misses >= self.release:
                self.kind = None
                self._streak = 0
        detected = detect(line)
        parser = PARSERS.get(detected)
        parsed = parser(line) if parser is not None else None
        if parsed is None:
            return Parsed(RAW, line)
        if self.kind is None:
            if detected == self._candidate:
                self._streak += 1
            else:
                self._candidate, self._streak = detected, 1
            if self._streak >= self.agree:
                self.kind = detected
                self._misses = 0
        return parsed
