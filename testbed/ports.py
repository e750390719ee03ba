"""Free loopback port helper.

Tests start many servers concurrently; asking the kernel for an ephemeral port (bind to
port 0) avoids hard-coded ports that collide between parallel runs. Everything binds
127.0.0.1 only, so nothing is ever exposed beyond the host.
"""

from __future__ import annotations

import socket
import threading

LOOPBACK = "127.0.0.1"

_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port() -> int:
    """Return a currently unused TCP port on 127.0.0.1.

    The port is released before returning (the caller's server binds it), so there is a
    small race window; ports already handed out by this process are never repeated, which
    removes the common case of two services in one test receiving the same port.
    """
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((LOOPBACK, 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free loopback port")


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct free loopback ports."""
    return [free_port() for _ in range(n)]


def port_is_open(port: int, host: str = LOOPBACK, timeout_s: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port (used as a readiness probe)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
