"""Shared helpers for the detector tests: rules built in code, and the foresight kinds registered."""

from __future__ import annotations

from typing import Any

from watcher.rulepack.schema import DetectorRule, DetectorSpec


def detector_rule(kind: str, series: str | None = None, predicts: str = "oom", **params: Any) -> DetectorRule:
    """A ``detector:`` rule as a pack would give it, params validated by the kind's model."""
    spec = DetectorSpec.model_validate({"kind": kind, "series": series, "params": params})
    return DetectorRule(id=f"t-{kind}", predicts=predicts, detector=spec)  # type: ignore[arg-type]
