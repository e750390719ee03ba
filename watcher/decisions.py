"""The decision thread: the one owner of the policy and of starting incidents.

Findings used to be handed to the executor on the engine thread, which then listed containers, read
weights and asked the model server for its version under the executor's lock, so one slow Docker
call or one hung replica stalled matching for the whole fleet, and operators' API calls changed
the policy from yet another thread while the engine read it. Here the engine thread only enqueues
(never blocks: the queue is bounded and a full queue drops and counts, like the signal queue), and
one thread takes findings and operator commands in arrival order: a pause posted after a finding
is applied after that finding's decision, never in the middle of it.

Resolved findings travel the same queue, so a plan that waits for its finding to resolve sees the
resolution after the decision that opened it. The thread also ticks (``on_tick``, every ``tick_s``
while it runs, busy or idle): a refused finding whose refusal can lapse (the restart backoff) is
decided again there, in line with the findings and resolutions, never beside them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from watcher.model import Finding

log = logging.getLogger("watcher.decisions")
T = TypeVar("T")
_STOP = object()


@dataclass(frozen=True)
class _Command:
    fn: Callable[[], Any]
    future: Future[Any]


class Decisions:
    def __init__(
        self,
        on_finding: Callable[[Finding], object],
        max_pending: int = 10_000,
        on_tick: Callable[[], object] | None = None,
        tick_s: float = 1.0,
    ) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self._on_finding = on_finding
        self._on_tick = on_tick
        self._tick_s = tick_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0  # findings refused by a full queue (the decision thread is far behind)
        self.decided = 0
        self.errors = 0
        self.ticks = 0

    # -- what other threads call ----------------------------------------------------------------
    def submit(self, finding: Finding) -> bool:
        """Queue a finding for decision; never blocks. False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(finding)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            log.warning("decision queue full: finding dropped", extra={"fields": {"rule": finding.rule_id}})
            return False
        return True

    def call(self, fn: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Run ``fn`` on the decision thread (operator commands, policy reads) and return its result.

        Raises ``TimeoutError`` if the thread does not get to it in time (a decision in progress
        waits on Docker or a model server), and ``RuntimeError`` if the thread is not running."""
        if not self.alive:
            raise RuntimeError("the decision thread is not running")
        future: Future[T] = Future()
        try:
            self._queue.put(_Command(fn, future), timeout=timeout_s)
        except queue.Full:
            raise TimeoutError("the decision thread is too far behind to take a command") from None
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"the decision thread did not answer within {timeout_s:.0f}s") from None

    def drain(self, timeout_s: float = 30.0) -> None:
        """Return once everything queued before this call has been decided (the queue is FIFO)."""
        if self.alive:
            self.call(lambda: None, timeout_s)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Decisions:
        self._thread = threading.Thread(target=self._run, name="decisions", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Decide what is already queued, then end (call after the engine stopped producing)."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout=timeout_s)
        self._thread = None

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        next_tick = time.monotonic() + self._tick_s
        while True:
            if self._on_tick is not None and time.monotonic() >= next_tick:
                self._tick()
                next_tick = time.monotonic() + self._tick_s
            try:
                wait = None if self._on_tick is None else max(next_tick - time.monotonic(), 0.0)
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            if isinstance(item, Finding):
                try:
                    self._on_finding(item)
                except Exception:  # one bad decision must not end all later ones
                    with self._lock:
                        self.errors += 1
                    log.exception("deciding on a finding failed", extra={"fields": {"rule": item.rule_id}})
                with self._lock:
                    self.decided += 1
                continue
            assert isinstance(item, _Command)
            self._call(item.fn, item.future)

    def _tick(self) -> None:
        assert self._on_tick is not None
        try:
            self._on_tick()
        except Exception:  # a failing tick must not end the decisions
            with self._lock:
                self.errors += 1
            log.exception("the decision thread's tick failed")
        with self._lock:
            self.ticks += 1

    @staticmethod
    def _call(fn: Callable[[], Any], future: Future[Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the caller, who raises it on its own thread
            future.set_exception(exc)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"pending": self.pending, "decided": self.decided, "dropped": self.dropped, "errors": self.errors}
