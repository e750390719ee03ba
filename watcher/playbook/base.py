"""What a playbook step is: a typed, frozen value that knows how to run, whether it already ran, and its JSON.

A step is data first (the policy plans it, the journal stores it, ``watcher incidents`` shows it)
and behaviour second (:meth:`Step.run` against a :class:`~watcher.playbook.context.StepContext`).
Keeping both on one class is what lets a new kind of step be added in one place: the executor
knows no step by name, it only asks each step what it needs to know.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from watcher.playbook.context import StepContext


class StepFailed(Exception):
    """A step could not do its job. ``hold`` says what the executor does with the replica."""

    def __init__(self, message: str, hold: bool) -> None:
        super().__init__(message)
        self.hold = hold  # keep the replica drained (True) or restore it (False)


class Interrupted(Exception):
    """The watcher is stopping while a step waits for something only a running watcher can see:
    the step stays journalled as intent, and the next start resumes the incident there."""


class Step(BaseModel, ABC):
    """One kind of step. Subclasses set ``kind`` (the journal's ``name``), declare their params as
    fields (defaults are what a journal row without that param means) and implement :meth:`run`."""

    # extra="ignore": a journal row may carry params this version does not use (``alert``'s
    # annotations were never read); resuming it must not fail on them.
    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: ClassVar[str]
    restarts: ClassVar[bool] = False  # restarts the container: counts against the restart budget
    hold_on_error: ClassVar[bool] = True  # an ActionError keeps the replica drained (False: restore it)
    ends_held: ClassVar[bool] = False  # once done, the incident closes HELD (kept drained on purpose)
    # changes something in the fleet (traffic, a container): counted by the fleet-wide rate limit. Only
    # steps that look or tell (alert, verify, waits) say False; a new kind counts unless it says so.
    changes_fleet: ClassVar[bool] = True

    @property
    def name(self) -> str:
        """The name the journal, the events and ``watcher incidents`` show."""
        return self.kind

    @property
    def takes_capacity(self) -> bool:
        """Takes the replica out of rotation: the policy's capacity rails apply to the plan."""
        return False

    @abstractmethod
    def run(self, ctx: StepContext) -> str:
        """Do it; return the journal's detail. Raise :class:`StepFailed` (or let an ``ActionError`` out)."""

    def already_happened(self, ctx: StepContext, intent_ts: float) -> bool:
        """For a step whose intent was journalled but not its outcome (the watcher died in between):
        did it take effect? False means "run it again", so every step that is not idempotent says how
        to tell from the world."""
        return False

    def params(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> dict[str, Any]:
        """The journal's shape, unchanged since the first version: ``{"name": ..., "params": {...}}``."""
        return {"name": self.name, "params": self.params()}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        return cls.model_validate(dict(params))

    @classmethod
    def _example(cls) -> Self:
        """A sample with non-default params, for the conformance suite over every registered kind."""
        return cls()
