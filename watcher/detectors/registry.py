"""Every detector kind in one registry: the engine builds detectors from it, and the rule-pack
schema validates ``detector: {kind, params}`` with the ``params_model`` each class declares.

The built-in kinds are an explicit list, resolved on first use rather than at import: detectors
read rule models (``watcher.rulepack.schema``), and the schema looks params models up here, so
importing the implementations eagerly would make the two modules import each other.
Plug-ins and tests add kinds with :func:`register`; a second class for one kind is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel

from watcher.detectors.base import Detector, DetectorConfigError

if TYPE_CHECKING:
    from watcher.rulepack.schema import AnyRule

_lock = threading.Lock()
_kinds: dict[str, type[Detector]] = {}


def _builtin() -> tuple[type[Detector], ...]:
    from watcher.detectors.anomaly import AnomalyDetector
    from watcher.detectors.builtin import EventDetector, PatternDetector, PromQLDetector, ThresholdDetector
    from watcher.detectors.change import ChangeDetector
    from watcher.detectors.forecast import RunwayDetector
    from watcher.detectors.peer import PeerDetector
    from watcher.detectors.predictor import FailurePredictor
    from watcher.detectors.templates import TemplateDetector

    return (
        PatternDetector,
        EventDetector,
        ThresholdDetector,
        PromQLDetector,
        RunwayDetector,
        ChangeDetector,
        PeerDetector,
        TemplateDetector,
        FailurePredictor,
        AnomalyDetector,
    )


def _registry() -> dict[str, type[Detector]]:
    with _lock:
        if not _kinds:
            for cls in _builtin():
                _add(cls)
        return _kinds


def _add(cls: type[Detector]) -> None:
    kind = getattr(cls, "kind", "")
    if not kind or kind != kind.lower() or not kind.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"invalid detector kind {kind!r} on {cls.__name__}: use lowercase letters, digits, - and _")
    current = _kinds.get(kind)
    if current is not None and current is not cls:
        raise ValueError(f"detector kind {kind!r} is already registered by {current.__name__}")
    _kinds[kind] = cls


def register(cls: type[Detector]) -> type[Detector]:
    """Add a detector class under its ``kind`` (plug-ins, tests). The same class again is a no-op."""
    registry = _registry()
    with _lock:
        _add(cls)
    assert cls.kind in registry
    return cls


def unregister(kind: str) -> None:
    """Forget a kind that :func:`register` added (tests, plug-ins being unloaded)."""
    registry = _registry()
    with _lock:
        registry.pop(kind, None)


def detector_classes() -> Mapping[str, type[Detector]]:
    """Every registered kind and its class, a snapshot."""
    return dict(_registry())


def params_model(kind: str) -> type[BaseModel] | None:
    """The params model of a ``detector:`` kind, or None when no detector takes ``kind`` that way."""
    cls = _registry().get(kind)
    return cls.params_model if cls is not None else None


def detector_kinds() -> Mapping[str, type[BaseModel]]:
    """The kinds a ``detector: {kind}`` rule may name, with their params models."""
    return {k: c.params_model for k, c in _registry().items() if c.params_model is not None}


def detector_kind_of(rule: AnyRule) -> str:
    """Rules of kind detector/forecast name their detector; the others are their own kind."""
    spec = getattr(rule, "detector_spec", None)
    if callable(spec):
        return str(spec().kind)
    return rule.kind


def build_detector(rule: AnyRule) -> Detector:
    """The detector for one rule; a kind nobody implements is a :class:`DetectorConfigError`."""
    kind = detector_kind_of(rule)
    cls = _registry().get(kind)
    if cls is None:
        known = ", ".join(sorted(_registry()))
        origin = f"{rule.origin}: " if rule.origin else ""
        raise DetectorConfigError(f"{origin}rule {rule.id!r}: no detector implements kind {kind!r} (known: {known})")
    return cls(rule)
