"""Every detector kind in one registry: the engine builds detectors from it, and the rule-pack
schema validates ``detector: {kind, params}`` with the ``params_model`` each kind declares.

The built-in kinds are a catalogue of names, not imports: for each kind the module and class that
implement it and, for ``detector: {kind, params}`` kinds, where its params model lives (a light
module: :mod:`watcher.detectors.params` or the light implementation itself). An implementation is
imported the first time a rule of its kind is built, so a watcher whose packs use no numeric rule
never loads numpy (issue #18: pay for a detector only when a loaded rule uses it), and validating params
(``watcher rules lint``, the schema) never loads an implementation at all. Resolving on use also
breaks the cycle between the detectors, which read rule models (``watcher.rulepack.schema``), and
the schema, which looks params models up here.

Plug-ins and tests add kinds with :func:`register`; a second class for one kind is refused.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from watcher.detectors.base import Detector, DetectorConfigError

if TYPE_CHECKING:
    from watcher.rulepack.schema import AnyRule


@dataclass(frozen=True, slots=True)
class BuiltinKind:
    """A shipped kind before its implementation is imported: ``module:Name`` references."""

    kind: str
    implementation: str
    params: str | None = None
    """The params model of ``detector: {kind, params}``; None for kinds that are rule kinds of their own."""

    def load(self) -> type[Detector]:
        cls = _resolve(self.implementation)
        if not (isinstance(cls, type) and issubclass(cls, Detector)):
            raise TypeError(f"{self.implementation} is not a Detector class")
        if cls.kind != self.kind or cls.params_model is not self.params_model():
            raise TypeError(f"{self.implementation} does not match its catalogue entry for kind {self.kind!r}")
        return cls

    def params_model(self) -> type[BaseModel] | None:
        if self.params is None:
            return None
        model = _resolve(self.params)
        assert isinstance(model, type) and issubclass(model, BaseModel), self.params
        return model


BUILTIN_KINDS: tuple[BuiltinKind, ...] = (
    BuiltinKind("match", "watcher.detectors.builtin:PatternDetector"),
    BuiltinKind("event", "watcher.detectors.builtin:EventDetector"),
    BuiltinKind("threshold", "watcher.detectors.builtin:ThresholdDetector"),
    BuiltinKind("promql", "watcher.detectors.builtin:PromQLDetector"),
    BuiltinKind("forecast", "watcher.detectors.forecast:RunwayDetector", "watcher.detectors.params:RunwayParams"),
    BuiltinKind("change", "watcher.detectors.change:ChangeDetector", "watcher.detectors.change:ChangeParams"),
    BuiltinKind("peer", "watcher.detectors.peer:PeerDetector", "watcher.detectors.params:PeerParams"),
    BuiltinKind(
        "templates", "watcher.detectors.templates:TemplateDetector", "watcher.detectors.templates:TemplateParams"
    ),
    BuiltinKind(
        "predictor", "watcher.detectors.predictor:FailurePredictor", "watcher.detectors.params:PredictorParams"
    ),
    BuiltinKind("anomaly", "watcher.detectors.anomaly:AnomalyDetector", "watcher.detectors.params:AnomalyParams"),
)
"""The shipped kinds; the conformance tests check each entry against the class it names."""

_lock = threading.RLock()
_kinds: dict[str, type[Detector] | BuiltinKind] = {b.kind: b for b in BUILTIN_KINDS}


def _resolve(ref: str) -> object:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _check_kind(cls: type[Detector]) -> str:
    kind = getattr(cls, "kind", "")
    if not kind or kind != kind.lower() or not kind.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"invalid detector kind {kind!r} on {cls.__name__}: use lowercase letters, digits, - and _")
    return str(kind)


def register(cls: type[Detector]) -> type[Detector]:
    """Add a detector class under its ``kind`` (plug-ins, tests). The same class again is a no-op."""
    kind = _check_kind(cls)
    with _lock:
        current = _kinds.get(kind)
        if isinstance(current, BuiltinKind):
            same = current.implementation == f"{cls.__module__}:{cls.__qualname__}"
            current = current.load() if same else current
        if current is not None and current is not cls:
            name = current.implementation if isinstance(current, BuiltinKind) else current.__name__
            raise ValueError(f"detector kind {kind!r} is already registered by {name}")
        _kinds[kind] = cls
    return cls


def unregister(kind: str) -> None:
    """Forget a kind that :func:`register` added (tests, plug-ins being unloaded)."""
    with _lock:
        _kinds.pop(kind, None)


def detector_class(kind: str) -> type[Detector] | None:
    """The class of ``kind``, importing its implementation on first use; None for an unknown kind."""
    with _lock:
        entry = _kinds.get(kind)
        if isinstance(entry, BuiltinKind):
            entry = _kinds[kind] = entry.load()
        return entry


def detector_classes() -> Mapping[str, type[Detector]]:
    """Every registered kind and its class, a snapshot. Imports every implementation (conformance
    tests, docs); the engine asks for one kind at a time with :func:`detector_class`."""
    with _lock:
        kinds = list(_kinds)
    return {k: c for k in kinds if (c := detector_class(k)) is not None}


def loaded_kinds() -> frozenset[str]:
    """The kinds whose implementation has been imported (or that were registered as classes)."""
    with _lock:
        return frozenset(k for k, c in _kinds.items() if not isinstance(c, BuiltinKind))


def params_model(kind: str) -> type[BaseModel] | None:
    """The params model of a ``detector:`` kind, or None when no detector takes ``kind`` that way.
    Never imports an implementation: built-in params models live in light modules."""
    with _lock:
        entry = _kinds.get(kind)
    if entry is None:
        return None
    return entry.params_model() if isinstance(entry, BuiltinKind) else entry.params_model


def detector_kinds() -> Mapping[str, type[BaseModel]]:
    """The kinds a ``detector: {kind}`` rule may name, with their params models."""
    with _lock:
        kinds = list(_kinds)
    return {k: m for k in kinds if (m := params_model(k)) is not None}


def detector_kind_of(rule: AnyRule) -> str:
    """Rules of kind detector/forecast name their detector; the others are their own kind."""
    spec = getattr(rule, "detector_spec", None)
    if callable(spec):
        return str(spec().kind)
    return rule.kind


def build_detector(rule: AnyRule) -> Detector:
    """The detector for one rule; a kind nobody implements is a :class:`DetectorConfigError`."""
    kind = detector_kind_of(rule)
    cls = detector_class(kind)
    if cls is None:
        with _lock:
            known = ", ".join(sorted(_kinds))
        origin = f"{rule.origin}: " if rule.origin else ""
        raise DetectorConfigError(f"{origin}rule {rule.id!r}: no detector implements kind {kind!r} (known: {known})")
    return cls(rule)
