"""The detector interface and its registry.

Modelled on river's one-base-class-per-family: every detector answers the same four calls
(``on_log``, ``on_lifecycle``, ``on_sample``, ``on_tick``) and serialises its state to JSON, so the
conformance tests can walk the registry and hold each kind to the same contract.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from watcher.model import Lifecycle, LogRecord, Sample, Target
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

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state for checkpoints; restoring it must give the same future findings."""
        return {}

    def restore(self, state: dict[str, Any], targets: dict[str, Target]) -> None:
        """Inverse of :meth:`state`; ``targets`` maps target keys back to targets."""
        return None


DetectorT = TypeVar("DetectorT", bound=type[Detector])

DETECTORS: dict[str, type[Detector]] = {}


def register(kind: str) -> Callable[[DetectorT], DetectorT]:
    """Class decorator: make a detector kind available to rules. Duplicates are refused."""

    def wrap(cls: DetectorT) -> DetectorT:
        if kind in DETECTORS and DETECTORS[kind] is not cls:
            raise ValueError(f"detector kind {kind!r} is already registered by {DETECTORS[kind].__name__}")
        cls.kind = kind
        DETECTORS[kind] = cls
        return cls

    return wrap


def detector_kind_of(rule: AnyRule) -> str:
    """Rules of kind detector/forecast name their detector; the others are their own kind."""
    spec = getattr(rule, "detector_spec", None)
    if callable(spec):
        return str(spec().kind)
    return rule.kind


def build_detector(rule: AnyRule) -> Detector:
    kind = detector_kind_of(rule)
    cls = DETECTORS.get(kind)
    if cls is None:
        known = ", ".join(sorted(DETECTORS))
        origin = f"{rule.origin}: " if rule.origin else ""
        raise DetectorConfigError(f"{origin}rule {rule.id!r}: no detector implements kind {kind!r} (known: {known})")
    return cls(rule)
