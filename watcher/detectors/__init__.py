"""Detectors: one per rule, each turning signals into per-target condition activity.

The engine owns rule state (pending/firing/resolved); a detector only says, per target, whether
its rule's condition holds now and why. New detector kinds register themselves in
:mod:`watcher.detectors.base` and are covered by the shared conformance tests at once.
"""

from watcher.detectors import anomaly as _anomaly  # noqa: F401 - registers the kind "anomaly"
from watcher.detectors import foresight as _foresight  # noqa: F401 - registers forecast, change, peer, ...
from watcher.detectors.base import DETECTORS, Detector, Observation, build_detector, register
from watcher.detectors.builtin import EventDetector, PatternDetector, PromQLDetector, ThresholdDetector

__all__ = [
    "DETECTORS",
    "Detector",
    "EventDetector",
    "Observation",
    "PatternDetector",
    "PromQLDetector",
    "ThresholdDetector",
    "build_detector",
    "register",
]
