"""When each (replica, rule) finding last resolved, and a bounded wait for that across threads.

A plan that only moves traffic keeps its weight until its finding resolves: the engine's thread
reports resolutions (:meth:`ResolvedFindings.mark`), a playbook worker waits for one
(:meth:`ResolvedFindings.wait_since`), and stopping the watcher releases every waiter
(:meth:`ResolvedFindings.interrupt`) with their incidents left open for the next start.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from watcher.playbook.base import Interrupted

MAX_KEYS = 10_000  # (replica, rule) pairs remembered; the oldest resolution is forgotten first


class ResolvedFindings:
    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._resolved: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._max_keys = max_keys
        self._cv = threading.Condition()
        self._stopping = False  # set by interrupt(); guarded by _cv

    def mark(self, target: str, rule_id: str, ts: float) -> None:
        with self._cv:
            self._resolved[(target, rule_id)] = ts
            self._resolved.move_to_end((target, rule_id))
            while len(self._resolved) > self._max_keys:
                self._resolved.popitem(last=False)
            self._cv.notify_all()

    def wait_since(self, target: str, rule_id: str, since: float, timeout_s: float) -> bool:
        """True once the finding resolved at or after ``since``; False at the deadline. Raises
        :class:`Interrupted` when the watcher stops first."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._resolved.get((target, rule_id), float("-inf")) < since:
                if self._stopping:
                    raise Interrupted(f"stopping while waiting for {rule_id} to resolve")
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(timeout=min(left, 1.0))
        return True

    def interrupt(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
