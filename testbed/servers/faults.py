"""Faults made by the model itself, inside a real model server (issue #16), switched by a file.

The simulator fakes a TF Serving that fails; with MLServer and KServe the server is real and only
the model misbehaves, as a real model does: it keeps memory per request until the cgroup limit
kills the server, raises on a growing share of requests (the server answers 500 and logs the
traceback its own way), slows down, hangs the server's event loop, or fails to load. The testbed
writes the switch, a JSON file whose path the server gets in ``TESTBED_FAULTS``; the model reads
it again whenever its modification time changes (one ``stat`` per request), so a fault starts and
stops without a restart.

What a restart does is what it does to a real fault. A leak, errors, a slowdown or a hang are the
running process's: a process started after the switch was written does not have them (a restart
cures them, as it cures a real leak, which is why restarting is the remedy). A version that fails
to load or an artifact rolled back are on disk: every start has them until the switch changes.

    {"leak_mb_per_request": 2}                  # memory kept per request, never freed
    {"leak_mb_per_s": 4, "leak_max_mb": 48}     # kept on each request: 4 MB more a second (to 48)
    {"error_ratio": 0.1, "error_ramp_per_s": 0.05, "error_max": 0.6}  # share that raises, growing
    {"delay_s": 0.5}                            # each request waits (the loop keeps serving)
    {"hang": true}                              # each request blocks the server's loop for good
    {"fail_load": ["2"]}                        # (on disk) these versions fail to load
    {"stale_on_restart": "1"}                   # (on disk) every version loads version 1's model

A switch without a leak frees what the model kept (a GC that finally runs).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

ENV = "TESTBED_FAULTS"
HANG_S = 3600.0
ON_DISK = frozenset({"fail_load", "stale_on_restart"})  # faults every start has; the others are the process's


class ModelFault(RuntimeError):
    """Raised by the model on a request the fault says fails (the server turns it into a 500)."""


class Faults:
    """The fault switch as a model sees it; cheap when the file is absent or unchanged."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        chosen = path if path is not None else os.environ.get(ENV)
        self.path = Path(chosen) if chosen else None
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._spec: dict[str, Any] = {}
        self._since = time.monotonic()
        self._owed = 0.0  # the share of requests due to fail, carried between requests
        self._born = time.time()  # the process (model) start, against the switch's mtime
        self.kept: list[bytes] = []  # the leak: what the model holds on to
        self._kept_bytes = 0

    def spec(self) -> dict[str, Any]:
        """The current switch ({} without a file); a changed file restarts the error ramp."""
        if self.path is None:
            return {}
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = None
        with self._lock:
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    loaded = json.loads(self.path.read_text()) if mtime is not None else {}
                except (OSError, ValueError):
                    loaded = {}
                spec = loaded if isinstance(loaded, dict) else {}
                if mtime is not None and mtime < self._born:  # written before this process started
                    spec = {k: v for k, v in spec.items() if k in ON_DISK}
                self._spec = spec
                self._since = time.monotonic()
                self._owed = 0.0
                if not any(k.startswith("leak_") for k in spec):
                    self.kept, self._kept_bytes = [], 0
            return dict(self._spec)

    def error_share(self, spec: dict[str, Any]) -> float:
        ramp = float(spec.get("error_ramp_per_s", 0.0)) * (time.monotonic() - self._since)
        top = float(spec.get("error_max", 1.0))
        return max(0.0, min(1.0, top, float(spec.get("error_ratio", 0.0)) + ramp))

    def before_request(self) -> float:
        """Apply the request-time faults; returns the delay the caller should wait (seconds).
        Raises :class:`ModelFault` on a request that fails; blocks (the calling thread, which in an
        async server is its event loop) when the fault is a hang."""
        spec = self.spec()
        if not spec:
            return 0.0
        self._leak(spec)
        if spec.get("hang"):
            time.sleep(HANG_S)
        with self._lock:
            self._owed += self.error_share(spec)
            fail = self._owed >= 1.0
            if fail:
                self._owed -= 1.0
        if fail:
            raise ModelFault(f"model fault (testbed): error share {self.error_share(spec):.2f}")
        return max(0.0, float(spec.get("delay_s", 0.0)))

    def _leak(self, spec: dict[str, Any]) -> None:
        owed = int(float(spec.get("leak_mb_per_request", 0.0)) * 2**20)
        per_s = float(spec.get("leak_mb_per_s", 0.0))
        with self._lock:
            if per_s > 0:  # paced by the clock: what is kept catches up with rate x time at each request
                owed += max(0, int(per_s * 2**20 * (time.monotonic() - self._since)) - self._kept_bytes)
            if "leak_max_mb" in spec:
                owed = min(owed, int(float(spec["leak_max_mb"]) * 2**20) - self._kept_bytes)
            if owed > 0:
                self.kept.append(b"\x01" * owed)  # written, so the pages count against the cgroup
                self._kept_bytes += owed

    def served_version(self, version: str) -> str:
        """The version whose model a load of ``version`` really gets: another one when an older
        artifact was rolled back under the new version's name (``stale_on_restart``)."""
        pinned = self.spec().get("stale_on_restart")
        return str(pinned) if pinned not in (None, "") else str(version)

    def check_load(self, version: str) -> None:
        """Raise as a model whose artifact is unreadable would, if this version is to fail to load."""
        failing = self.spec().get("fail_load") or []
        if str(version) in {str(v) for v in failing}:
            raise ModelFault(f"version {version}: artifact unreadable (testbed fault)")
