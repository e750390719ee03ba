"""gRPC client errors as Python clients of TF Serving log them.

``grpc._channel._InactiveRpcError: <_InactiveRpcError of RPC that terminated with:`` is followed
(on the same line in most log shippers, on the next lines in a raw traceback) by
``status = StatusCode.UNAVAILABLE`` and ``details = "failed to connect to all addresses"``. The
old beta API wrote ``AbortionError(code=StatusCode.UNAVAILABLE, details="Connect Failed")``.
Any line naming a ``StatusCode.X`` (``grpc_status`` is X), an RPC error class, or starting with
``details = "`` is parsed, so each line of a multi-line error is attributed.
"""

from __future__ import annotations

import re

from watcher.parsers.base import Parsed

KIND = "grpc"
_STATUS = re.compile(r"StatusCode\.([A-Z_]{2,32})")
_DETAILS = re.compile(r'details ?= ?"([^"]{0,1024})"')
_ERROR_CLASSES = ("_InactiveRpcError", "_MultiThreadedRendezvous", "_Rendezvous", "AbortionError", "ExpirationError")
_CONTINUATIONS = ('details = "', 'debug_error_string = "')
_SERIOUS = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "DATA_LOSS"})


def parse(line: str) -> Parsed | None:
    """Parse a line that names a gRPC status code; ``None`` otherwise."""
    m = _STATUS.search(line)
    stripped = line.strip()
    fields: dict[str, str] = {}
    if m is not None:
        fields["grpc_status"] = m.group(1)
    elif not (stripped.startswith(_CONTINUATIONS) or any(name in line for name in _ERROR_CLASSES)):
        return None
    status = fields.get("grpc_status", "")
    d = _DETAILS.search(line)
    if d is not None:
        fields["details"] = d.group(1)
    for name in _ERROR_CLASSES:
        if name in line:
            fields["error_class"] = name
            break
    level = "error" if (status in _SERIOUS or not status) else "info" if status == "OK" else "warning"
    return Parsed(KIND, stripped, level, None, fields)
