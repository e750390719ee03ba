"""Refused findings that are still active and whose refusal can lapse: the decision thread decides them again.

The engine reports a finding once, when its rule starts firing, and again only when it resolves. A
finding the guard rails refused for a while (the restart backoff, an incident already running on
the replica, capacity that a peer's recovery gives back) would otherwise never be decided again:
the replica stays sick until some other rule fires. The policy says when each refusal can have
lapsed (:attr:`watcher.policy.Decision.retry_at`); this set keeps one finding per (replica, rule)
until then, and forgets it when it resolves, when an incident for its replica opens, or when a
re-decision refuses it for good (freshness bounds that: no finding is retried past ``fresh_s``).

Only the decision thread reads and changes it (findings, resolutions and the retry tick all run there).
"""

from __future__ import annotations

from dataclasses import dataclass

from watcher.model import Finding


@dataclass(frozen=True)
class Refused:
    finding: Finding
    reason: str  # the refusal that put it here (the journal has it; kept for status and logs)
    retry_at: float  # decide again at or after this time (the injected clock's)


class RefusedFindings:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Refused] = {}

    def hold(self, finding: Finding, reason: str, retry_at: float) -> None:
        """Keep (or move) ``finding`` for a re-decision at ``retry_at``; a newer finding of the pair replaces it."""
        self._entries[(finding.target.key, finding.rule_id)] = Refused(finding, reason, retry_at)

    def discard(self, target: str, rule_id: str) -> Refused | None:
        return self._entries.pop((target, rule_id), None)

    def discard_target(self, target: str) -> list[Refused]:
        """An incident opened for ``target``: it owns the replica now, so nothing waits to act on it beside it."""
        gone = [pair for pair in self._entries if pair[0] == target]
        return [self._entries.pop(pair) for pair in gone]

    def due(self, now: float) -> list[Refused]:
        """The findings whose refusal can have lapsed by ``now``, oldest finding first (they stay held
        until re-decided: the re-decision holds, moves or discards each)."""
        return sorted((e for e in self._entries.values() if e.retry_at <= now), key=lambda e: e.finding.ts)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, pair: object) -> bool:
        return pair in self._entries
