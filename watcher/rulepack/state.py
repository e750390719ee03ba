"""Alert-style state per (rule, target), as Prometheus keeps it for alerting rules.

inactive → pending (condition true, ``for`` not yet elapsed) → firing → resolved, and from
resolved (or inactive) back to pending when the condition returns. ``keep_firing_for`` holds a
firing rule that long after its condition clears, so a flapping signal does not resolve and
re-fire (and re-plan remediation) on every blip. A pending rule whose condition clears goes back
to inactive at once: ``for`` exists precisely to ignore such blips.

Time is always passed in, never read from a clock, so live, replay and tests share this code.
The table serialises to JSON so a restarted watcher keeps pending timers (with their original
``active_at``) and firing states, as Prometheus does with its ``ALERTS_FOR_STATE`` series.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

STATE_FORMAT = 1
DEFAULT_RESOLVED_RETENTION_S = 15 * 60.0  # Prometheus keeps resolved alerts 15 minutes too
_GC_EVERY_S = 60.0


class RuleState(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state. ``since`` is when the new state began (the ``now`` of the update);
    ``active_at`` is when the condition became true in this episode (None once inactive)."""

    rule_id: str
    target_key: str
    from_state: RuleState
    to_state: RuleState
    since: float
    active_at: float | None


class Entry(BaseModel):
    """The state of one (rule, target). Mutable: the table updates it in place."""

    model_config = ConfigDict(extra="forbid")

    rule_id: str
    target_key: str
    state: RuleState
    since: float = Field(description="when the current state began")
    active_at: float = Field(description="when the condition became true in this episode")
    fired_at: float | None = None
    cleared_at: float | None = Field(default=None, description="firing but condition false since")
    resolved_at: float | None = None


class _Persisted(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = STATE_FORMAT
    entries: list[Entry]


class RuleStateTable:
    """The state of every (rule id, target key) pair that is not inactive."""

    def __init__(self, resolved_retention_s: float = DEFAULT_RESOLVED_RETENTION_S) -> None:
        self.resolved_retention_s = resolved_retention_s
        self._entries: dict[tuple[str, str], Entry] = {}
        self._last_gc: float | None = None

    def update(
        self,
        rule_id: str,
        target_key: str,
        active: bool,
        now: float,
        for_s: float = 0.0,
        keep_firing_for_s: float = 0.0,
    ) -> Transition | None:
        """Feed one evaluation of the rule's condition for one target; return the transition, if any.

        ``for_s`` and ``keep_firing_for_s`` are passed on every call (not stored) so a reloaded
        pack with new values applies to states already held.
        """
        self._maybe_gc(now)
        key = (rule_id, target_key)
        entry = self._entries.get(key)
        if entry is None or entry.state is RuleState.RESOLVED:
            if not active:
                return None
            before = RuleState.INACTIVE if entry is None else RuleState.RESOLVED
            entry = Entry(rule_id=rule_id, target_key=target_key, state=RuleState.PENDING, since=now, active_at=now)
            self._entries[key] = entry
            if for_s <= 0:
                self._fire(entry, now)
            return self._transition(entry, before)
        if entry.state is RuleState.PENDING:
            if not active:
                del self._entries[key]
                return Transition(rule_id, target_key, RuleState.PENDING, RuleState.INACTIVE, now, None)
            if now - entry.active_at >= for_s:
                self._fire(entry, now)
                return self._transition(entry, RuleState.PENDING)
            return None
        # firing
        if active:
            entry.cleared_at = None
            return None
        if entry.cleared_at is None:
            entry.cleared_at = now
        if keep_firing_for_s > 0 and now - entry.cleared_at < keep_firing_for_s:
            return None
        entry.state = RuleState.RESOLVED
        entry.since = now
        entry.resolved_at = now
        entry.cleared_at = None
        return self._transition(entry, RuleState.FIRING)

    def get(self, rule_id: str, target_key: str) -> Entry | None:
        """A copy of the entry for this pair, None when inactive."""
        entry = self._entries.get((rule_id, target_key))
        return entry.model_copy() if entry is not None else None

    def state(self, rule_id: str, target_key: str) -> RuleState:
        entry = self._entries.get((rule_id, target_key))
        return entry.state if entry is not None else RuleState.INACTIVE

    def firing(self) -> list[Entry]:
        """Copies of the firing entries, oldest first."""
        return self._with_state(RuleState.FIRING)

    def pending(self) -> list[Entry]:
        return self._with_state(RuleState.PENDING)

    def resolved(self) -> list[Entry]:
        """Recently resolved entries (kept ``resolved_retention_s`` so notifiers can send 'resolved')."""
        return self._with_state(RuleState.RESOLVED)

    def forget(self, *, rule_id: str | None = None, target_key: str | None = None) -> int:
        """Drop entries of a removed rule or a removed target; return how many were dropped."""
        doomed = [
            k
            for k in self._entries
            if (rule_id is None or k[0] == rule_id) and (target_key is None or k[1] == target_key)
        ]
        for k in doomed:
            del self._entries[k]
        return len(doomed)

    def gc(self, now: float) -> int:
        """Remove resolved entries older than the retention; return how many were removed."""
        self._last_gc = now
        doomed = [
            k
            for k, e in self._entries.items()
            if e.state is RuleState.RESOLVED and now - (e.resolved_at or e.since) >= self.resolved_retention_s
        ]
        for k in doomed:
            del self._entries[k]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter([e.model_copy() for e in self._entries.values()])

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot (store it as-is; :meth:`from_json` restores it)."""
        return _Persisted(entries=list(self._entries.values())).model_dump(mode="json")

    @classmethod
    def from_json(
        cls, data: dict[str, Any], resolved_retention_s: float = DEFAULT_RESOLVED_RETENTION_S
    ) -> RuleStateTable:
        """Restore a snapshot; raises ``pydantic.ValidationError`` on a malformed or foreign one."""
        persisted = _Persisted.model_validate(data)
        if persisted.format != STATE_FORMAT:
            raise ValueError(f"rule state format {persisted.format} is not supported (expected {STATE_FORMAT})")
        table = cls(resolved_retention_s)
        for entry in persisted.entries:
            table._entries[(entry.rule_id, entry.target_key)] = entry
        return table

    # ----------------------------------------------------------------------------------- helpers

    def _with_state(self, state: RuleState) -> list[Entry]:
        found = [e.model_copy() for e in self._entries.values() if e.state is state]
        return sorted(found, key=lambda e: (e.since, e.rule_id, e.target_key))

    @staticmethod
    def _fire(entry: Entry, now: float) -> None:
        entry.state = RuleState.FIRING
        entry.since = now
        entry.fired_at = now
        entry.cleared_at = None

    @staticmethod
    def _transition(entry: Entry, before: RuleState) -> Transition:
        return Transition(entry.rule_id, entry.target_key, before, entry.state, entry.since, entry.active_at)

    def collect_garbage(self, now: float) -> None:
        """The periodic clean-up :meth:`update` runs first: for a caller that skips an update it
        knows would change nothing (the engine's tick, for a firing rule still active)."""
        self._maybe_gc(now)

    def _maybe_gc(self, now: float) -> None:
        if self._last_gc is None:
            self._last_gc = now
        elif now - self._last_gc >= _GC_EVERY_S or now < self._last_gc:
            self.gc(now)
