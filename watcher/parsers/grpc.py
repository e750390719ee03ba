"""gRPC client errors as Python clients of TF Serving log them.

``grpc._channel._InactiveRpcError: <_InactiveRpcError of RPC that terminated with:`` is followed
(on the same line in most log shippers, on the next lines in a raw traceback) by
``status = StatusCode.UNAVAILABLE`` and ``details = "failed to connect to all addresses"``. The
old beta API wrote ``AbortionError(code=StatusCode.UNAVAILABLE, details="Connect Failed")``.
Any line naming a ``StatusCode.X`` is parsed; ``grpc_status`` is X.
"""

from __future__ import annotations

import re

from watcher.parsers.base import Parsed

KIND = "grpc"
_STATUS = re.compile(r"StatusCode\.([A-Z_]{2,32})")
_DETAILS = re.compile(r'details ?= ?"([^"]{0,1024})"')
_SERIOUS = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "DATA_LOSS"})


def parse(line: str) -> Parsed | None:
    """Parse a line that names a gRPC status code; ``None`` otherwise."""
    m = _STATUS.search(line)
    if m is None:
        return None
    status = m.group(1)
    fields = {"grpc_status": status}
    d = _DETAILS.search(line)
    if d is not None:
        fields["details"] = d.group(1)
    for name in ("_InactiveRpcError", "_Rendezvous", "AbortionError", "ExpirationError", "_MultiThreadedRendezvous"):
        if name in line:
            fields["error_class"] = name
            break
    level = "error" if status in _SERIOUS else "warning" if status != "OK" else "info"
    return Parsed(KIND, line.strip(), level, None, fields)
