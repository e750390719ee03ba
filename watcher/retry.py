"""Retry with bounded exponential backoff: one schedule for every reconnect loop and retried call.

Two shapes use it. A *retried call* (an alert POST) tries ``attempts`` times, waiting
``base_s, 2*base_s, ...`` capped at ``cap_s`` between tries, then gives up with the last error
(:func:`with_retries`). A *reconnect loop* (the Docker event streams, the Prometheus poller) runs
until stopped: after each failure it waits :meth:`Backoff.next_delay`, and after a success calls
:meth:`Backoff.reset` so the next outage starts again from ``base_s``. Only the loop uses the
failure counter; :meth:`Backoff.delays` is pure, so one Backoff may be shared by threads that
retry calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Backoff", "RetryableError", "with_retries"]

T = TypeVar("T")


class Backoff:
    """Exponential backoff ``base_s * 2**n`` capped at ``cap_s``; ``attempts`` bounds a retried call."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0, attempts: int = 4) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempts = attempts
        self.failures = 0  # consecutive failures of a reconnect loop (see next_delay)

    def __repr__(self) -> str:
        return f"Backoff(base_s={self.base_s}, cap_s={self.cap_s}, attempts={self.attempts})"

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th consecutive failure (0-based)."""
        return float(min(self.cap_s, self.base_s * 2**failures))

    def delays(self) -> list[float]:
        """The waits between the ``attempts`` tries of a retried call (one fewer than attempts)."""
        return [self.delay(i) for i in range(max(0, self.attempts - 1))]

    def next_delay(self) -> float:
        """Reconnect loops: the wait after one more failure."""
        delay = self.delay(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """Reconnect loops: connected again, so the next outage starts from ``base_s``."""
        self.failures = 0


class RetryableError(Exception):
    """Raised inside a retried call for failures worth another try (connection error, 5xx)."""


def with_retries(
    call: Callable[[], T],
    backoff: Backoff,
    what: str,
    *,
    give_up: Callable[[str], Exception],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call``; on :class:`RetryableError` wait and retry, then raise ``give_up(message)``.

    Anything else (an error for a 4xx, say) propagates at once: retrying a request the receiver
    has refused as malformed only delays the alert that explains the problem. ``give_up`` makes
    the final error the caller's own type (the actuators' ``ActionError``), worded for the journal.
    """
    delays = backoff.delays()
    last = ""
    for attempt in range(len(delays) + 1):
        try:
            return call()
        except RetryableError as exc:
            last = str(exc)
            if attempt < len(delays):
                sleep(delays[attempt])
    raise give_up(f"{what}: gave up after {len(delays) + 1} attempts; last error: {last}")
