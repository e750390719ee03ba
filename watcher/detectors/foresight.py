"""The foresight detectors in one import: runway forecast, change, peer, log templates, predictor.

Importing this module registers each kind twice, as every statistical detector must: its params
model with the rule-pack schema (so packs naming it validate at load) and its implementation with
the detector registry (so the engine can build it). ``watcher.detectors`` imports it, so loading
any pack sees these kinds.
"""

from __future__ import annotations

from watcher.detectors.change import ChangeDetector, ChangeParams
from watcher.detectors.forecast import RunwayDetector, RunwayParams
from watcher.detectors.peer import PeerDetector, PeerParams
from watcher.detectors.predictor import FailurePredictor, PredictorParams
from watcher.detectors.templates import TemplateDetector, TemplateParams

__all__ = [
    "ChangeDetector",
    "ChangeParams",
    "FailurePredictor",
    "PeerDetector",
    "PeerParams",
    "PredictorParams",
    "RunwayDetector",
    "RunwayParams",
    "TemplateDetector",
    "TemplateParams",
]
