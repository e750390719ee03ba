"""Shift traffic in HAProxy through its runtime API (admin socket): applied at once, no reload.

Drain is ``set server <backend>/<server> state drain``: no new connections are routed to it while
established ones finish, which is the exact meaning of a drain (``weight 0`` would do the same for
routing but hides *why* the server gets nothing). A weight above 0 is ``set server ... weight N``
followed by ``state ready``. Every change is read back from ``show servers state`` before the call
returns, so "applied" means HAProxy says so.

The original weight is HAProxy's own ``srv_iweight`` (the weight from the config file), so it
survives a watcher restart without any state of ours. ``wait_idle`` is exact: ``show stat`` gives
the server's current sessions (``scur``) and queued requests (``qcur``); idle means both are 0.

The socket protocol itself is :class:`HAProxyRuntime`, usable on its own (the testbed drives its
HAProxy through it, so tests exercise the client the shifter uses).
"""

from __future__ import annotations

import csv
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watcher.actions.base import ActionError, Replica, TrafficShifter

__all__ = ["HAPROXY_NAME", "HAProxyRuntime", "HAProxyShifter", "haproxy_name", "parse_servers_state", "parse_stat"]

HAPROXY_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
"""A proxy or server name as HAProxy itself accepts it (``invalid_char()`` in src/tools.c: letters,
digits, ``-``, ``_``, ``.``, ``:``). The runtime API splits commands on ``;`` and newlines and
arguments on spaces, so a name outside this set could chain a command of its own."""


def haproxy_name(kind: str, name: str) -> str:
    """``name`` if HAProxy could have it as a ``kind`` (backend, server) name, else ActionError."""
    if not HAPROXY_NAME.fullmatch(name):
        raise ActionError(f"haproxy: {kind} name {name!r} is not a HAProxy name (letters, digits, - _ . : only)")
    return name


# srv_admin_state bits (include/haproxy/server-t.h): forced/inherited maintenance and drain
_ADMF_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_ADMF_DRAIN = 0x08 | 0x10 | 0x80


def parse_servers_state(text: str) -> list[dict[str, str]]:
    """Rows of ``show servers state`` (first line is the format version, then ``# header``)."""
    header: list[str] = []
    rows: list[dict[str, str]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            header = line.lstrip("# ").split()
            continue
        values = line.split()
        if not header or len(values) < 4:
            continue
        rows.append(dict(zip(header, values, strict=False)))
    return rows


def parse_stat(text: str) -> list[dict[str, str]]:
    """Rows of ``show stat`` (CSV whose header line starts with ``# pxname,svname,...``)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("#"):
        return []
    lines[0] = lines[0].lstrip("# ")
    return [dict(row) for row in csv.DictReader(lines)]


class HAProxyRuntime:
    """HAProxy's runtime API on its admin socket: one connection per command, every failure an
    :class:`ActionError` naming the socket and the command."""

    def __init__(self, socket_path: Path, timeout_s: float = 5.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s

    def command(self, cmd: str) -> str:
        """Send one runtime-API command and return the whole reply."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout_s)
                s.connect(str(self.socket_path))
                s.sendall(cmd.strip().encode() + b"\n")
                chunks: list[bytes] = []
                while data := s.recv(65536):
                    chunks.append(data)
        except OSError as exc:
            raise ActionError(f"haproxy admin socket {self.socket_path}: {cmd!r} failed: {exc}") from None
        return b"".join(chunks).decode(errors="replace")

    def checked(self, cmd: str) -> None:
        """A ``set ...`` command: those answer nothing on success, so any reply is a refusal."""
        reply = self.command(cmd).strip()
        if reply:
            raise ActionError(f"haproxy refused {cmd!r}: {reply}")

    def servers_state(self, backend: str) -> dict[str, dict[str, Any]]:
        """``show servers state <backend>`` by server name, plus derived ``state`` (ready, drain,
        maint), ``weight`` (current) and ``initial_weight`` (from the config file); {} when the
        backend has no servers or does not exist."""
        out: dict[str, dict[str, Any]] = {}
        for row in parse_servers_state(self.command(f"show servers state {haproxy_name('backend', backend)}")):
            admin = int(row.get("srv_admin_state", "0"))
            info: dict[str, Any] = dict(row)
            info["state"] = "maint" if admin & _ADMF_MAINT else "drain" if admin & _ADMF_DRAIN else "ready"
            info["weight"] = int(row.get("srv_uweight", "0"))
            info["initial_weight"] = int(row.get("srv_iweight", row.get("srv_uweight", "0")))
            out[row["srv_name"]] = info
        return out

    def stat(self) -> list[dict[str, str]]:
        """``show stat``: one row per proxy and server (sessions, queue, health...)."""
        return parse_stat(self.command("show stat"))


class HAProxyShifter(TrafficShifter):
    """A :class:`~watcher.actions.base.TrafficShifter` for one HAProxy backend (see module doc)."""

    def __init__(
        self,
        socket_path: Path,
        backend: str,
        *,
        timeout_s: float = 5.0,
        poll_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.runtime = HAProxyRuntime(socket_path, timeout_s)
        self.backend = haproxy_name("backend", backend)
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    @property
    def confirms_idle(self) -> bool:
        """``wait_idle`` reads the server's current sessions (scur): exact, so a drain needs no settle time."""
        return True

    # -- runtime API --------------------------------------------------------------------------
    def servers(self) -> dict[str, dict[str, Any]]:
        """``show servers state`` of the backend, by server name, with derived weight/state."""
        out = self.runtime.servers_state(self.backend)
        if not out:
            raise ActionError(f"haproxy: backend {self.backend} has no servers (or does not exist)")
        return out

    def _server(self, replica: Replica) -> tuple[str, dict[str, Any]]:
        servers = self.servers()
        if replica.lb_name is not None:
            haproxy_name("server", replica.lb_name)
            if replica.lb_name in servers:
                return replica.lb_name, servers[replica.lb_name]
            raise ActionError(f"haproxy: no server {replica.lb_name} in backend {self.backend} for {replica}")
        for name, info in servers.items():
            if f"{info.get('srv_addr')}:{info.get('srv_port')}" == replica.upstream:
                return name, info
        raise ActionError(f"haproxy: no server at {replica.upstream} in backend {self.backend} for {replica}")

    # -- TrafficShifter -----------------------------------------------------------------------
    def get_weight(self, replica: Replica) -> int:
        _, info = self._server(replica)
        return 0 if info["state"] != "ready" else int(info["weight"])

    def original_weight(self, replica: Replica) -> int:
        return int(self._server(replica)[1]["initial_weight"])

    def set_weight(self, replica: Replica, weight: int) -> None:
        if weight < 0 or weight > 256:
            raise ActionError(f"haproxy: weight must be within 0..256, got {weight} for {replica}")
        with self._lock:
            name, _ = self._server(replica)
            path = f"{haproxy_name('backend', self.backend)}/{haproxy_name('server', name)}"
            if weight == 0:
                self.runtime.checked(f"set server {path} state drain")
            else:
                self.runtime.checked(f"set server {path} weight {weight}")
                self.runtime.checked(f"set server {path} state ready")
            _, info = self._server(replica)
            applied = 0 if info["state"] != "ready" else int(info["weight"])
            if applied != weight:
                raise ActionError(
                    f"haproxy: {path} reports state {info['state']} weight {info['weight']} after setting {weight}"
                )

    def sessions(self, replica: Replica) -> int:
        """Current sessions plus queued requests on the replica's server (``scur`` + ``qcur``)."""
        name, _ = self._server(replica)
        for row in self.runtime.stat():
            if row.get("pxname") == self.backend and row.get("svname") == name:
                return int(row.get("scur") or 0) + int(row.get("qcur") or 0)
        raise ActionError(f"haproxy: show stat has no row for {self.backend}/{name}")

    def wait_idle(self, replica: Replica, timeout_s: float) -> bool:
        deadline = self._clock() + timeout_s
        while self.sessions(replica) > 0:
            if self._clock() >= deadline:
                return False
            self._sleep(self.poll_s)
        return True
