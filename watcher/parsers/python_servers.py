"""Python model servers: gunicorn, uvicorn, and the last line of a Python traceback.

Many TF models are served by a Flask/FastAPI app instead of (or in front of) TF Serving; its
failure modes show up as gunicorn's ``WORKER TIMEOUT`` / ``was sent SIGKILL! Perhaps out of
memory?``, uvicorn's ``500 Internal Server Error`` access lines, and the exception line that ends
a traceback (``tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM ...``).
"""

from __future__ import annotations

import re

from watcher.parsers.base import Parsed, normalize_level
from watcher.timefmt import epoch

GUNICORN = "gunicorn"
UVICORN = "uvicorn"
PYTHON = "python"

# [2024-01-09 13:24:39 +0000] [1637] [CRITICAL] WORKER TIMEOUT (pid:7214)   (also without [] or tz)
_GUNICORN = re.compile(
    r"\[?(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?: ([+-])(\d\d)(\d\d))?\]? \[(\d{1,10})\] \[([A-Z]{1,10})\] "
)
# the same without the time (a formatter or a paste that dropped it): "[INFO] Booting worker with pid: 575558"
_GUNICORN_BARE = re.compile(r"\[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] ")
_WORKER_PID = re.compile(r"\(pid:(\d{1,10})\)|[Ww]orker with pid:? (\d{1,10})")
# INFO:     127.0.0.1:5000 - "POST /predict HTTP/1.1" 500 Internal Server Error
_UVICORN = re.compile(r"(TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL):( {1,10})")
_UVICORN_ACCESS = re.compile(r'([^\s"]{1,300}) - "([A-Z]{1,16}) ([^\s"]{0,8192}) (HTTP/[0-9.]{1,5})" (\d{3})')
_EXCEPTION_SUFFIXES = ("Error", "Exception", "Exit", "Interrupt", "Warning", "Failure")


def parse_gunicorn(line: str) -> Parsed | None:
    """A gunicorn error-log line (the arbiter's and the workers' own)."""
    m = _GUNICORN.match(line)
    fields: dict[str, str] = {}
    if m is None:
        bare = _GUNICORN_BARE.match(line)
        if bare is None:
            return None
        level, ts, message = bare.group(1), None, line[bare.end() :]
    else:
        y, mo, d, hh, mi, ss, sign, oh, om, pid, level = m.groups()
        ts = epoch(int(y), int(mo), int(d), int(hh), int(mi), int(ss))
        if ts is not None and sign:
            ts -= (1 if sign == "+" else -1) * (int(oh) * 3600 + int(om) * 60)
        message = line[m.end() :]
        fields["pid"] = pid
    w = _WORKER_PID.search(message, 0, 512)
    if w is not None:
        fields["worker_pid"] = w.group(1) or w.group(2)
    if "SIGKILL" in message:
        fields["signal"] = "SIGKILL"
    return Parsed(GUNICORN, message, normalize_level(level), ts, fields)


def parse_uvicorn(line: str) -> Parsed | None:
    """A uvicorn line: ``LEVEL:`` padded to 9 columns, then an access record or a message."""
    m = _UVICORN.match(line)
    if m is None or len(m.group(1)) + 1 + len(m.group(2)) != 10:
        return None
    message = line[m.end() :]
    fields: dict[str, str] = {}
    a = _UVICORN_ACCESS.match(message)
    if a is not None:
        client, method, path, _proto, status = a.groups()
        fields = {"client": client, "method": method, "path": path, "status": status}
    return Parsed(UVICORN, message, normalize_level(m.group(1)), None, fields)


def parse_traceback(line: str) -> Parsed | None:
    """``Traceback (most recent call last):`` or the ``pkg.module.SomeError: details`` line."""
    text = line.strip()
    if text.startswith("Traceback (most recent call last)"):
        return Parsed(PYTHON, text, "error", None, {"traceback": "start"})
    head, sep, detail = text.partition(":")
    if not head or len(head) > 200 or " " in head or not head.endswith(_EXCEPTION_SUFFIXES):
        return None
    parts = head.split(".")
    if not all(p.isidentifier() for p in parts):
        return None
    fields = {"exception": parts[-1]}
    if len(parts) > 1:
        fields["exception_module"] = ".".join(parts[:-1])
    if sep:
        fields["detail"] = detail.strip()[:1024]
    return Parsed(PYTHON, text, "warning" if head.endswith("Warning") else "error", None, fields)


def parse(line: str) -> Parsed | None:
    """Whichever of gunicorn, uvicorn or traceback fits."""
    first = line[:1]
    if first == "[" or first.isdigit():
        return parse_gunicorn(line)
    return parse_uvicorn(line) or parse_traceback(line)
