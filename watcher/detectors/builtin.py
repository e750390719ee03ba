"""The detectors behind the rule kinds every pack uses: log pattern, lifecycle event, thresholds.

A log line or a Docker event is a point in time, but rule state needs a condition that holds for
a while. Both count occurrences in a sliding window (``when: {count, within}``); without ``when``
one occurrence keeps the condition true for :data:`DEFAULT_WINDOW_S`, so a single fatal line
fires at once and resolves after five quiet minutes.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, ClassVar

from watcher.detectors.base import Detector, Observation
from watcher.model import Lifecycle, LifecycleKind, LogRecord, Sample, Target
from watcher.rulepack.schema import AnyRule, EventRule, MatchRule, PromQLRule, ThresholdRule

DEFAULT_WINDOW_S = 300.0
MAX_EVIDENCE = 300  # characters of a matched line kept as evidence
MAX_EVENTS_PER_TARGET = 1_000  # a window keeps at most this many (a flood cannot grow memory)


class _Windowed(Detector):
    """Counts occurrences per target in a sliding window; active while count >= threshold."""

    def __init__(self, rule: AnyRule, count: int, within: float | None) -> None:
        super().__init__(rule)
        self.count = count
        self.within = within if within is not None else DEFAULT_WINDOW_S
        self._hits: dict[str, deque[float]] = {}
        self._targets: dict[str, Target] = {}
        self._active: dict[str, bool] = {}
        self._maxlen = max(self.count, MAX_EVENTS_PER_TARGET)

    def _hit(self, target: Target, ts: float, evidence: str) -> list[Observation]:
        key = target.key
        self._targets[key] = target
        hits = self._hits.setdefault(key, deque(maxlen=self._maxlen))
        hits.append(ts)
        self._expire(hits, ts)
        n = len(hits)
        active = n >= self.count
        self._active[key] = active
        score = min(1.0, n / self.count)
        return [Observation(target, active, ts, evidence=evidence[:MAX_EVIDENCE], score=score)]

    def _expire(self, hits: deque[float], now: float) -> None:
        while hits and hits[0] <= now - self.within:
            hits.popleft()

    def on_tick(self, now: float) -> list[Observation]:
        out: list[Observation] = []
        for key, hits in list(self._hits.items()):
            self._expire(hits, now)
            active = len(hits) >= self.count
            if self._active.get(key) and not active:
                out.append(Observation(self._targets[key], False, now, evidence="window expired"))
            self._active[key] = active
            if not hits:
                del self._hits[key]
                self._active.pop(key, None)
        return out

    def next_tick_at(self, now: float) -> float:
        """When the oldest hit of some target leaves its window (``_expire`` drops it there)."""
        return min((hits[0] + self.within for hits in self._hits.values() if hits), default=math.inf)

    def state(self) -> dict[str, Any]:
        return {"hits": {k: list(v) for k, v in self._hits.items()}}

    def restore(self, state: dict[str, Any], targets: dict[str, Target]) -> None:
        for key, hits in state.get("hits", {}).items():
            if key in targets:
                self._targets[key] = targets[key]
                self._hits[key] = deque((float(h) for h in hits), maxlen=self._maxlen)
                self._active[key] = len(self._hits[key]) >= self.count


class PatternDetector(_Windowed):
    """Log pattern with optional count/within. Matching itself happens once, in the engine."""

    kind: ClassVar[str] = "match"

    def __init__(self, rule: AnyRule) -> None:
        assert isinstance(rule, MatchRule)
        when = rule.when
        super().__init__(rule, when.count if when else 1, when.within if when else None)
        self.match_rule = rule

    def on_log(self, record: LogRecord) -> list[Observation]:
        return self._hit(record.target, record.ts, record.message)

    def on_lifecycle(self, event: Lifecycle) -> list[Observation]:
        """Lines of the process a start replaced count no more: the new process is judged on its own.
        Counted across it, a restart that cured the replica would be acted on again for the old
        lines, and a rule firing over it would never fire again for a restart that cured nothing,
        as the change detector's baseline is reset for the same reason."""
        if event.kind not in (LifecycleKind.START, LifecycleKind.RESTART):
            return []
        key = event.target.key
        # every counted line is forgotten: a line's time may be its own stamp (another time zone,
        # another clock), so comparing it with the event's would keep old lines or drop new ones
        if self._hits.pop(key, None) is None:
            return []
        if self._active.pop(key, False):
            return [Observation(event.target, False, event.ts, evidence=f"count reset by {event.kind.value}")]
        return []


class EventDetector(_Windowed):
    """Docker lifecycle events: an OOM kill, a die with given exit codes, N restarts in a window."""

    kind: ClassVar[str] = "event"

    def __init__(self, rule: AnyRule) -> None:
        assert isinstance(rule, EventRule)
        ev = rule.event
        super().__init__(rule, ev.count, ev.within)
        self.event = ev

    def on_lifecycle(self, event: Lifecycle) -> list[Observation]:
        spec = self.event
        if event.kind.value != str(spec.kind):
            return []
        if spec.exit_codes is not None and event.exit_code not in spec.exit_codes:
            return []
        if spec.health is not None and event.health != spec.health:
            return []
        detail = f"docker {event.kind.value}"
        if event.exit_code is not None:
            detail += f" exit code {event.exit_code}"
        if event.health:
            detail += f" {event.health}"
        return self._hit(event.target, event.ts, detail)


class _Bounded(Detector):
    """A series compared with a bound; stale samples count as 'condition false' (never act on
    data we could not refresh)."""

    series_name: str

    def on_sample(self, sample: Sample) -> list[Observation]:
        if sample.series != self.series_name or sample.target is None:
            return []
        threshold = getattr(self.rule, "threshold")  # noqa: B009 - both rule kinds have one
        if sample.stale:
            return [Observation(sample.target, False, sample.ts, evidence=f"{self.series_name} stale")]
        active = bool(threshold.crossed(sample.value))
        bound = threshold.above if threshold.above is not None else threshold.below
        relation = "above" if threshold.above is not None else "below"
        evidence = f"{self.series_name} = {sample.value:g} ({relation} {bound:g})" if active else ""
        return [Observation(sample.target, active, sample.ts, evidence=evidence)]


class ThresholdDetector(_Bounded):
    kind: ClassVar[str] = "threshold"

    def __init__(self, rule: AnyRule) -> None:
        assert isinstance(rule, ThresholdRule)
        super().__init__(rule)
        self.series_name = rule.threshold.series


class PromQLDetector(_Bounded):
    """The Prometheus source names each query's samples after the rule id."""

    kind: ClassVar[str] = "promql"

    def __init__(self, rule: AnyRule) -> None:
        assert isinstance(rule, PromQLRule)
        super().__init__(rule)
        self.series_name = rule.id
