"""The seam between sources and the engine: envelopes, a bounded fair queue, the Source base.

Sources run in their own threads and must never be slowed down by the engine (a blocked Docker
log reader makes Docker buffer, then the container's stdout blocks). So ``put`` never blocks:
a source whose own buffer is full loses the line, and the loss is counted per source so it shows
on /metrics instead of vanishing. The engine takes batches round-robin across sources, so one
container flooding its log cannot starve the signals of the others: each source's share of a
batch is at most one item per turn.

At-least-once delivery: an envelope carries the cursor to commit *after* the engine has processed
its signal. A watcher that dies between reading and committing re-reads those lines; a consumer
that compares cursors can drop the repeats, so nothing is lost and nothing is processed twice.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from watcher.model import Signal


@dataclass(frozen=True, slots=True)
class Envelope:
    """A signal plus where it came from and the cursor (key, value) to commit once processed."""

    signal: Signal
    source: str
    cursor: tuple[str, str] | None = None


class SignalQueue:
    """Bounded per source and in total; ``put`` never blocks; ``get_batch`` is round-robin.

    Memory is bounded by ``max_total`` envelopes: a source key with an empty buffer is forgotten
    (only its counters remain), so thousands of short-lived containers do not leave deques behind.
    """

    def __init__(self, max_per_source: int = 10_000, max_total: int = 100_000) -> None:
        if max_per_source <= 0 or max_total <= 0:
            raise ValueError("queue bounds must be positive")
        self.max_per_source = max_per_source
        self.max_total = max_total
        self._buffers: OrderedDict[str, deque[Envelope]] = OrderedDict()
        self._depth = 0
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0  # consumers asleep on an empty queue: the only ones a put must wake
        self.dropped: dict[str, int] = {}
        self.accepted: dict[str, int] = {}

    def put(self, env: Envelope) -> bool:
        """Enqueue or drop (counted); returns whether the envelope was kept. Never blocks."""
        return self.put_many((env,)) == 1

    def put_many(self, envs: Iterable[Envelope]) -> int:
        """``put`` for a reader that gathered many envelopes: one lock and at most one wake-up
        for all of them (a fleet's log reader hands over a round of every stream at once).
        Returns how many were kept; each one dropped is counted against its own source."""
        kept = 0
        with self._cond:
            for env in envs:
                buf = self._buffers.get(env.source)
                if (buf is not None and len(buf) >= self.max_per_source) or self._depth >= self.max_total:
                    self.dropped[env.source] = self.dropped.get(env.source, 0) + 1
                    continue
                if buf is None:
                    buf = self._buffers[env.source] = deque()
                buf.append(env)
                self._depth += 1
                self.accepted[env.source] = self.accepted.get(env.source, 0) + 1
                kept += 1
            if kept and self._waiting:
                self._cond.notify()
        return kept

    def get_batch(self, max_items: int = 512, timeout_s: float | None = 0.5, linger_s: float = 0.0) -> list[Envelope]:
        """Wait up to ``timeout_s`` for anything, then take up to ``max_items`` one per source per turn.

        ``linger_s``: once something is there, let more arrive for this long (unless ``max_items``
        are there already) before taking the batch. A fleet's lines arrive one at a time from many
        followers; without it every line would be a batch of its own, with its own engine pass and
        cursor commit, and every put would wake the consumer. The source served first moves to the
        back, so successive batches rotate the head start too.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._depth == 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
            lingering = linger_s > 0 and self._depth < max_items
        if lingering:
            time.sleep(linger_s)  # not waiting on the condition: puts meanwhile wake nobody
        with self._cond:
            batch: list[Envelope] = []
            while len(batch) < max_items and self._depth > 0:
                for source in list(self._buffers):
                    if len(batch) >= max_items:
                        break
                    buf = self._buffers[source]
                    batch.append(buf.popleft())
                    self._depth -= 1
                    # Rotate: the source just served goes to the back of the line.
                    self._buffers.move_to_end(source)
                    if not buf:
                        del self._buffers[source]
            return batch

    @property
    def depth(self) -> int:
        with self._cond:
            return self._depth

    def stats(self) -> dict[str, Any]:
        """A snapshot for /metrics and /status."""
        with self._cond:
            return {
                "depth": self._depth,
                "max_total": self.max_total,
                "max_per_source": self.max_per_source,
                "depth_by_source": {k: len(v) for k, v in self._buffers.items()},
                "accepted": dict(self.accepted),
                "dropped": dict(self.dropped),
                "dropped_total": sum(self.dropped.values()),
            }


class Source(ABC):
    """A thing that reads the outside world in its own threads and puts envelopes in a queue.

    Contract (``tests/unit/conformance/test_source_conformance.py`` checks every subclass):

    * :meth:`start` returns at once, having started the source's threads; a second ``start``
      while running is a no-op (implementations begin with ``if not self._claim_start(): return``);
    * :meth:`stop` asks every thread to end, joins them (bounded) and returns; it is idempotent
      and safe on a source that never started; implementations call ``super().stop()`` first;
    * threads only ever :meth:`SignalQueue.put`, which never blocks: a full queue loses (and
      counts) envelopes, it never stalls the reader;
    * trouble is reported, never raised into the engine: ``connected`` feeds /readyz (False while
      the backend is unreachable), ``last_error`` says why in words an operator can act on, and
      :meth:`status` is a JSON-able dict with at least ``name``, ``connected`` and ``last_error``.

    ``start``/``stop`` are called from the owning thread; ``status`` from any thread.
    """

    name: str = "source"

    def __init__(self, queue: SignalQueue, name: str | None = None) -> None:
        self.queue = queue
        if name is not None:
            self.name = name
        self.connected = False
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._running = False
        self._run_lock = threading.Lock()

    def _claim_start(self) -> bool:
        """True for the call that should start the threads; False when already running."""
        with self._run_lock:
            if self._running:
                return False
            self._running = True
            self._stop.clear()
            return True

    @abstractmethod
    def start(self) -> None:
        """Start the source's threads and return at once (a no-op when already running)."""

    def stop(self) -> None:
        """Ask the threads to end; subclasses then join them and close their connections."""
        with self._run_lock:
            self._running = False
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _error(self, message: str) -> None:
        self.last_error = message

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "connected": self.connected, "last_error": self.last_error}

    def __enter__(self) -> Source:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
