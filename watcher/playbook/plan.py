"""A plan: the ordered steps the policy chose for one incident, as the journal stores and the executor runs them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from watcher.playbook.base import Step, StepFailed
from watcher.playbook.context import StepContext
from watcher.playbook.registry import REGISTRY, UnknownStepKind


class UnreadableStep(Step):
    """A journalled step this version cannot read (a kind it does not know, params it cannot parse).

    Loading it must not fail: ``watcher incidents`` lists every incident, and the executor fails
    such a step when it reaches it, restoring the replica (nothing it cannot name is done to it).
    The JSON it came from is kept as it was."""

    kind = "unreadable"
    raw: dict[str, Any]
    error: str

    @property
    def name(self) -> str:
        return str(self.raw.get("name", ""))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.raw.get("params") or {})}

    def run(self, ctx: StepContext) -> str:
        raise StepFailed(self.error, hold=False)


def _read(data: Mapping[str, Any]) -> Step:
    try:
        return REGISTRY.step_from_json(data)
    except UnknownStepKind:
        return UnreadableStep(raw=dict(data), error=f"unknown step {data.get('name')!r}")
    except ValidationError as exc:
        return UnreadableStep(raw=dict(data), error=f"unreadable step {data.get('name')!r}: {exc}")


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    def __init__(self, steps: Iterable[Step] = ()) -> None:
        object.__setattr__(self, "steps", tuple(steps))

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, idx: int) -> Step:
        return self.steps[idx]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def takes_capacity(self) -> bool:
        """Some step takes the replica out of rotation: capacity rails apply."""
        return any(s.takes_capacity for s in self.steps)

    @property
    def changes_fleet(self) -> bool:
        """Some step changes traffic or a container: the fleet-wide rate limit counts the plan. An
        alert-only rule firing on every replica at once must not use up the budget a drain needs."""
        return any(s.changes_fleet for s in self.steps)

    @property
    def restarts(self) -> bool:
        """Some step restarts the container: the restart budget and backoff apply."""
        return any(s.restarts for s in self.steps)

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.steps]

    @classmethod
    def from_json(cls, data: Sequence[Mapping[str, Any]]) -> Plan:
        return cls(_read(d) for d in data)
