"""The client side of the running watcher's mutations (``watcher silence|pause|resume|dry-run``).

The API (:mod:`watcher.api`) takes ``POST /silence``, ``/pause``, ``/resume`` and ``/dry-run`` with a
bearer token. Operators used to type those as curl calls; these commands send the same bodies and turn
every failure into one line that says what to do (the watcher is not running there, the token is wrong,
the body was refused and why), never a traceback. Only the standard library: the command must work
from the watcher's image without anything else installed.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from watcher.redact import redact_url

__all__ = ["ControlError", "api_base", "parse_duration", "post", "read_token"]

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)([smhd]))")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ControlError(RuntimeError):
    """The call did not do what was asked; ``str()`` is the one line to print."""


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds (``3600``) or units (``90s``, ``30m``, ``1h30m``, ``2d``)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"expected a duration such as 3600, 30m, 1h or 1h30m, got {text!r}") from None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"expected a positive duration, got {text!r}")
    return seconds


def api_base(api: str) -> str:
    """``host:port`` or a URL -> the base URL; a wildcard listen address is reached on loopback."""
    if "://" not in api:
        host, _, port = api.rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        api = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return api.rstrip("/")


def read_token(path: Path) -> str:
    """The token in a file (a Docker or Kubernetes secret): its first line, whitespace stripped."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ControlError(f"{path}: cannot read the token file: {exc.strerror or exc}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ControlError(f"{path}: the token file is empty")
    return token


def post(base: str, endpoint: str, body: dict[str, Any], token: str | None, timeout_s: float = 10.0) -> dict[str, Any]:
    """POST ``body`` to ``base/endpoint``; the API's JSON answer, or :class:`ControlError` with one line."""
    url = f"{base}/{endpoint}"
    shown = redact_url(url)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return _json_object(answer.read())
    except urllib.error.HTTPError as exc:
        error = _json_object(exc.read()).get("error") or exc.reason
        hint = ""
        if exc.code in (401, 403):
            hint = " (set WATCHER_API_TOKEN or --token-file to the watcher's api_token)"
        raise ControlError(f"{shown}: {exc.code}: {error}{hint}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        why = getattr(reason, "strerror", None) or str(reason)
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused (is 'watcher run' running there? set --api or api_listen)"
        raise ControlError(f"cannot reach the watcher at {shown}: {why}") from None
    except (TimeoutError, OSError) as exc:
        raise ControlError(f"cannot reach the watcher at {shown}: {exc.strerror or exc}") from None


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8", errors="replace") or "{}")
    except ValueError:
        return {"error": raw[:200].decode("utf-8", errors="replace").strip()}
    return doc if isinstance(doc, dict) else {"answer": doc}
