"""Change detection: a sustained shift of a replica's series away from that replica's own baseline.

CUSUM (Page's cumulative sum), because it is the optimal detector of a step of known size, its
false-alarm rate is a closed-form function of two parameters, and it is a handful of float
operations per sample, so the same arithmetic runs per signal here and for a whole fleet at once
in :class:`~watcher.detectors.vectorized.CusumBatch` (which holds the formula).

Parameters in the terms an operator thinks in: ``min_shift`` (a shift smaller than this, in the
series' units, never fires: an error ratio going from 0.1 % to 0.2 % is not an incident),
``direction`` and ``warmup``. ``k`` and ``h`` (in baseline standard deviations) trade detection
delay against false alarms; the defaults (k=1, h=8) give an in-control run length of ~10^7
samples on Gaussian noise and catch a 3-sigma step in about four samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from watcher.detectors.base import Detector, DetectorConfigError, Observation
from watcher.model import Lifecycle, LifecycleKind, Sample, Target
from watcher.rulepack.schema import AnyRule, StrictModel


class ChangeParams(StrictModel):
    """Params of ``change``: CUSUM of ``series`` per target against its own baseline."""

    direction: Literal["up", "down", "both"] = "up"
    min_shift: float = Field(default=0.0, ge=0, description="shifts smaller than this (series units) never fire")
    warmup: int = Field(default=60, ge=5, description="samples that form the baseline before detecting")
    k: float = Field(default=1.0, gt=0, description="allowance, in baseline standard deviations")
    h: float = Field(default=8.0, gt=0, description="decision interval, in baseline standard deviations")
    adapt: float = Field(default=0.005, ge=0, lt=1, description="EWMA rate of the baseline while quiet")


@dataclass(slots=True)
class CusumState:
    """One series' baseline and cumulative sums (mirrors one row of ``CusumBatch``)."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    s_up: float = 0.0
    s_dn: float = 0.0

    def to_json(self) -> list[float]:
        return [self.count, self.mean, self.m2, self.s_up, self.s_dn]

    @classmethod
    def from_json(cls, v: list[float]) -> CusumState:
        return cls(*(float(x) for x in v))


def cusum_step(st: CusumState, x: float, p: ChangeParams) -> tuple[bool, float]:
    """One sample; returns (active, S/H). Same operations, same order as ``CusumBatch.step``."""
    delta = x - st.mean
    if st.count < p.warmup:
        count = st.count + 1.0
        mean = st.mean + delta / count
        m2 = st.m2 + delta * (x - mean)
        if count == p.warmup:
            m2 = m2 / max(count - 1.0, 1.0)
        st.count, st.mean, st.m2 = count, mean, m2
        st.s_up = st.s_dn = 0.0
        return False, 0.0
    sigma = math.sqrt(st.m2)
    scale = max(max(sigma, p.min_shift), 1e-12)
    allowance = max(p.k * scale, p.min_shift)
    limit = p.h * scale
    cap = limit / 3.0
    s_up = min(max(st.s_up + min(delta - allowance, cap), 0.0), 2.0 * limit) if p.direction != "down" else 0.0
    s_dn = min(max(st.s_dn + min(-delta - allowance, cap), 0.0), 2.0 * limit) if p.direction != "up" else 0.0
    if max(s_up, s_dn) < limit / 2.0:
        d = min(max(delta, -3.0 * scale), 3.0 * scale)
        st.mean = st.mean + p.adapt * d
        st.m2 = st.m2 + p.adapt * (d * d - st.m2)
    st.s_up, st.s_dn = s_up, s_dn
    stat = max(s_up, s_dn)
    return stat > limit, stat / limit


class ChangeDetector(Detector):
    """Per target CUSUM on one series; a restart of the target starts a new baseline."""

    kind: ClassVar[str] = "change"
    params_model: ClassVar[type[BaseModel] | None] = ChangeParams

    def __init__(self, rule: AnyRule) -> None:
        super().__init__(rule)
        spec = getattr(rule, "detector_spec", None)
        if not callable(spec) or not spec().series:
            raise DetectorConfigError(f"rule {rule.id!r}: change needs detector.series")
        ds = spec()
        params = ds.parsed_params()
        assert isinstance(params, ChangeParams)
        self.params = params
        self.series: str = ds.series
        self._state: dict[str, CusumState] = {}
        self._targets: dict[str, Target] = {}
        self._active: dict[str, bool] = {}

    def on_lifecycle(self, event: Lifecycle) -> list[Observation]:
        """A replaced process has a new baseline (a fresh model load, a new version)."""
        if event.kind not in (LifecycleKind.START, LifecycleKind.RESTART):
            return []
        key = event.target.key
        self._state.pop(key, None)
        if self._active.pop(key, False):
            return [Observation(event.target, False, event.ts, evidence=f"baseline reset by {event.kind.value}")]
        return []

    def on_sample(self, sample: Sample) -> list[Observation]:
        if sample.series != self.series or sample.target is None or sample.stale:
            return []
        if not math.isfinite(sample.value):
            return []  # a 0/0 error ratio at zero traffic says nothing
        key = sample.target.key
        self._targets[key] = sample.target
        st = self._state.get(key)
        if st is None:
            st = self._state[key] = CusumState()
        active, score = cusum_step(st, sample.value, self.params)
        self._active[key] = active
        evidence = ""
        if active:
            evidence = (
                f"{self.series} = {sample.value:.4g} shifted {self.params.direction} from its baseline "
                f"{st.mean:.4g} (sd {math.sqrt(st.m2):.3g}, CUSUM {score:.1f}x the decision interval)"
            )
        return [Observation(sample.target, active, sample.ts, evidence=evidence, score=min(1.0, score))]

    def state(self) -> dict[str, Any]:
        return {"series": {k: s.to_json() for k, s in self._state.items()}, "active": dict(self._active)}

    def restore(self, state: dict[str, Any], targets: dict[str, Target]) -> None:
        for key, v in state.get("series", {}).items():
            if key in targets:
                self._targets[key] = targets[key]
                self._state[key] = CusumState.from_json(v)
        for key, a in state.get("active", {}).items():
            if key in targets:
                self._active[key] = bool(a)
