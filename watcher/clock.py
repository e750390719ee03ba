"""Injected time. The engine never reads the wall clock itself, so replay and tests run the
same code as the live watcher, on simulated time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (float)."""
        ...


class WallClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to: replay and tests drive it."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock does not run backwards")
        self._now += seconds
        return self._now

    def set(self, ts: float) -> None:
        if ts < self._now:
            raise ValueError(f"a clock does not run backwards ({ts} < {self._now})")
        self._now = ts
