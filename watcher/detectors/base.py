"""The detector interface.

Modelled on river's one-base-class-per-family: every detector answers the same four calls
(``on_log``, ``on_lifecycle``, ``on_sample``, ``on_tick``) and serialises its state to JSON, so the
conformance tests can walk the registry (:mod:`watcher.detectors.registry`) and hold each kind to
the same contract. A class declares its ``kind`` and, for ``detector: {kind, params}`` rules, its
``params_model`` once; the rule-pack schema validates params with that model.
"""

from __future__ import annotations

import math
from abc import ABC
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from watcher.model import Lifecycle, LogRecord, Sample, Target

if TYPE_CHECKING:  # the rule language imports the registry, which imports this module
    from watcher.rulepack.schema import AnyRule


@dataclass(frozen=True, slots=True)
class Observation:
    """A detector's word on one target: does the rule's condition hold, and why."""

    target: Target
    active: bool
    ts: float
    evidence: str = ""
    score: float = 1.0
    eta_s: float | None = None


class DetectorConfigError(ValueError):
    """A rule names a detector kind that has no implementation, or parameters it cannot use."""


class Detector(ABC):
    """One rule's condition, evaluated per target. Pure: no I/O, time only from its inputs."""

    kind: ClassVar[str]
    params_model: ClassVar[type[BaseModel] | None] = None
    """The model of ``detector: {kind, params}``; None for kinds that are rule kinds of their own."""

    def __init__(self, rule: AnyRule) -> None:
        self.rule = rule

    def on_log(self, record: LogRecord) -> list[Observation]:
        """Called only with lines the rule's pattern matched (the engine scans once for all rules)."""
        return []

    def on_lifecycle(self, event: Lifecycle) -> list[Observation]:
        return []

    def on_sample(self, sample: Sample) -> list[Observation]:
        return []

    def on_tick(self, now: float) -> list[Observation]:
        """Time passing without signals (windows expiring, forecasts ageing)."""
        return []

    def next_tick_at(self, now: float) -> float:
        """The earliest time at which :meth:`on_tick` could change anything; replay jumps its clock
        to it across quiet stretches instead of ticking every step.

        Early is always safe (a tick with nothing to do is a no-op), late is not. A detector that
        overrides :meth:`on_tick` without this is ticked at every step (``now``); one with the
        base :meth:`on_tick` never needs a tick (``inf``)."""
        return now if type(self).on_tick is not Detector.on_tick else math.inf

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state for checkpoints; restoring it must give the same future findings."""
        return {}

    def restore(self, state: dict[str, Any], targets: dict[str, Target]) -> None:
        """Inverse of :meth:`state`; ``targets`` maps target keys back to targets."""
        return None
