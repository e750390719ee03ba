"""General-purpose streaming anomaly scoring for metric series (rule kind ``detector: {kind: anomaly}``).

The same class scores every metric stream in production and runs the Numenta Anomaly Benchmark
(``watcher eval nab``), so its benchmark figure is the figure of what actually runs.

Design (why each stage is there):

1. **Value scaling.** Values are mapped to [0, 1] by the series' range: the range known in advance
   when there is one (NAB gives each file's min/max), else the range seen so far. A single alarm
   threshold then means the same thing on every series.
2. **Raw surprise, an ensemble of cheap online models**, each giving a score in [0, 1]:
   * *multi-scale Gaussian*: the deviation of the value from exponentially weighted means at several
     time scales, in units of that scale's exponentially weighted deviation (a robust z-score on
     several scales catches spikes as well as level shifts and slow drifts);
   * *nearest-neighbour context* (KNN-CAD's idea): the distance of the latest short subsequence to
     its nearest neighbours among past subsequences, ranked against recent such distances (a
     conformal p-value), which catches shape anomalies in periodic series that no mean sees.
   The ensemble takes the largest.
3. **Anomaly likelihood** (Numenta HTM's post-processing): a short-term mean of raw scores is
   compared with the long-term distribution of raw scores; the tail probability, on a log scale,
   is the score. A series that is always noisy stops alarming; a quiet one alarms on a small jump.
4. **Alarm shaping**: NAB (and an operator) credits only the first alarm of an incident, and earlier
   is better, so a score is passed through only when it beats the recent (slowly decaying) maximum of
   passed scores. One spike at onset, then silence while the incident lasts.

Pure Python floats on the hot path (numpy only for the neighbour search): about 20 µs a point.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal

import numpy as np
from pydantic import Field

from watcher.detectors.base import Detector, Observation, register
from watcher.model import Sample, Target
from watcher.rulepack.schema import AnyRule, DetectorRule, StrictModel, register_detector_kind


class AnomalyParams(StrictModel):
    """Parameters of the ``anomaly`` detector. The defaults are the one set used on all of NAB."""

    threshold: float = Field(default=0.6, ge=0.0, le=1.0, description="alarm level (NAB-optimised for reward-low-FP)")
    spans: tuple[float, ...] = Field(default=(5.0, 50.0, 500.0), description="EW mean spans, in points")
    var_floor: float = Field(default=1e-3, gt=0, description="smallest deviation, as a fraction of the range")
    knn_dim: int = Field(default=8, ge=1, description="length of the subsequences compared by the neighbour model")
    knn_history: int = Field(default=1000, ge=10, description="past subsequences kept")
    knn_k: int = Field(default=3, ge=1)
    knn_calibration: int = Field(default=300, ge=10, description="recent distances a new one is ranked against")
    extreme_margin: float = Field(
        default=0.05, ge=0, description="a new extreme beyond the range seen so far by this fraction of it"
    )
    extreme_raw: float = Field(default=2.0, ge=0, description="raw score of such a new extreme (0 disables)")
    combine: Literal["max", "min", "mean"] = Field(
        default="min", description="how the level and context models' surprises are combined"
    )
    short_window: int = Field(default=1, ge=1, description="raw scores averaged by the likelihood")
    likelihood_floor: float = Field(
        default=0.1, gt=0, description="added to the raw scores' deviation: how calm a series may look"
    )
    long_window: int = Field(default=1500, ge=10, description="raw scores the likelihood compares with")
    learning: int = Field(default=300, ge=0, description="points before any score above 0 (warm-up)")
    surprise_cap: float = Field(default=10.0, gt=0, description="-log10 tail probability counted as raw 1")
    z_scale: float = Field(default=3.0, gt=0, description="likelihood z mapped to z / (z + z_scale)")
    decay: float = Field(default=0.999, gt=0, lt=1, description="per-point decay of the alarm-shaping maximum")


def _surprise(z: float) -> float:
    """-log10 of the two-sided Gaussian tail probability of a z-score (asymptotic form far out)."""
    a = abs(z)
    if a < 8.0:
        return -math.log10(max(math.erfc(a / math.sqrt(2.0)), 1e-300))
    # erfc(x) ~ exp(-x²)/(x√π): keeps growing where erfc itself underflows
    x = a / math.sqrt(2.0)
    return (x * x + math.log(x * math.sqrt(math.pi))) / math.log(10.0)


class AnomalyScorer:
    """The scoring core, independent of the engine: feed ``(ts, value)`` in order, get a score in [0, 1]."""

    def __init__(self, params: AnomalyParams, value_min: float | None = None, value_max: float | None = None) -> None:
        self.p = params
        self.fixed_range = value_min is not None and value_max is not None
        self.lo = value_min if value_min is not None else math.inf
        self.hi = value_max if value_max is not None else -math.inf
        self.n = 0
        n_scales = len(params.spans)
        self.alphas = [2.0 / (s + 1.0) for s in params.spans]
        self.mean = [0.0] * n_scales
        self.var = [0.0] * n_scales
        self.recent: deque[float] = deque(maxlen=params.knn_dim)
        self.hist = np.zeros((params.knn_history, params.knn_dim), dtype=np.float64)
        self.hist_count = 0  # subsequences ever stored; the ring slot of the next is count % size
        self.calib: deque[float] = deque(maxlen=params.knn_calibration)
        self.raw_short: deque[float] = deque(maxlen=params.short_window)
        self.raw_long: deque[float] = deque(maxlen=params.long_window)
        self.long_sum = 0.0
        self.long_sq = 0.0
        self.peak = 0.0
        self.seen_lo = math.inf
        self.seen_hi = -math.inf

    # ------------------------------------------------------------------------------- scaling
    def _scale(self, value: float) -> float:
        if not self.fixed_range:
            self.lo = min(self.lo, value)
            self.hi = max(self.hi, value)
        span = self.hi - self.lo
        return (value - self.lo) / span if span > 0 else 0.0

    # ------------------------------------------------------------------------------ raw models
    def _gauss(self, x: float) -> float:
        worst = 0.0
        floor = self.p.var_floor**2
        for j, a in enumerate(self.alphas):
            if self.n == 0:
                self.mean[j] = x
                continue
            d = x - self.mean[j]
            z = d / math.sqrt(self.var[j] + floor)
            worst = max(worst, _surprise(z) / self.p.surprise_cap)
            self.mean[j] += a * d
            self.var[j] = (1.0 - a) * (self.var[j] + a * d * d)
        return worst

    def _knn(self, x: float) -> float:
        self.recent.append(x)
        if len(self.recent) < self.p.knn_dim:
            return 0.0
        vec = np.array(self.recent)
        size, dim, k = self.p.knn_history, self.p.knn_dim, self.p.knn_k
        score = 0.0
        filled = min(self.hist_count, size)
        if filled >= k + dim:
            dist = np.sqrt(((self.hist[:filled] - vec) ** 2).sum(axis=1))
            # The latest dim-1 subsequences overlap this one: they are its own past, not neighbours.
            for back in range(1, dim):
                dist[(self.hist_count - back) % size] = np.inf
            alpha = float(np.partition(dist, k - 1)[:k].mean())
            m = len(self.calib)
            if m >= 10:
                mu = sum(self.calib) / m
                sd = math.sqrt(max(sum(c * c for c in self.calib) / m - mu * mu, 0.0)) + self.p.var_floor
                z = (alpha - mu) / sd
                score = _surprise(z) / self.p.surprise_cap if z > 0 else 0.0
            self.calib.append(alpha)
        self.hist[self.hist_count % size] = vec
        self.hist_count += 1
        return score

    def _extreme(self, x: float) -> float:
        """Numenta's "spatial anomaly": a value beyond everything seen so far, by a margin.

        Works on raw values, not scaled ones: without a known range the scale itself moves."""
        out = 0.0
        if self.n >= self.p.knn_dim:
            margin = self.p.extreme_margin * (self.seen_hi - self.seen_lo)
            if x > self.seen_hi + margin or x < self.seen_lo - margin:
                out = self.p.extreme_raw
        self.seen_lo = min(self.seen_lo, x)
        self.seen_hi = max(self.seen_hi, x)
        return out

    # ------------------------------------------------------------------------------ likelihood
    def _likelihood(self, raw: float) -> float:
        self.raw_short.append(raw)
        short = sum(self.raw_short) / len(self.raw_short)
        out = 0.0
        m = len(self.raw_long)
        if m >= 10:
            mu = self.long_sum / m
            sd = math.sqrt(max(self.long_sq / m - mu * mu, 0.0)) + self.p.likelihood_floor
            z = (short - mu) / sd
            # One-sided (only more surprise counts), squashed smoothly: no ties at 1.0.
            out = z / (z + self.p.z_scale) if z > 0 else 0.0
        if len(self.raw_long) == self.raw_long.maxlen:
            old = self.raw_long[0]
            self.long_sum -= old
            self.long_sq -= old * old
        self.raw_long.append(raw)
        self.long_sum += raw
        self.long_sq += raw * raw
        return out

    # ------------------------------------------------------------------------------ public
    def score(self, ts: float, value: float) -> float:
        """The anomaly score of this point given everything before it; 0 during warm-up."""
        if not math.isfinite(value):
            return 0.0
        x = self._scale(value)
        level, context, extreme = self._gauss(x), self._knn(x), self._extreme(value)
        if self.p.combine == "min":
            raw = max(min(level, context), extreme)
        elif self.p.combine == "mean":
            raw = max(0.5 * (level + context), extreme)
        else:
            raw = max(level, context, extreme)
        self.n += 1
        s = self._likelihood(raw)
        if self.n <= self.p.learning:
            return 0.0
        # Pass a score only when it beats the decaying maximum of recent scores: a plateau of high
        # scores yields one alarm at its start.
        previous = self.peak * self.p.decay
        self.peak = max(previous, s)
        return s if s > previous else 0.0

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state; :meth:`restore` of it gives identical future scores."""
        return {
            "lo": self.lo if math.isfinite(self.lo) else None,
            "hi": self.hi if math.isfinite(self.hi) else None,
            "fixed_range": self.fixed_range,
            "n": self.n,
            "mean": list(self.mean),
            "var": list(self.var),
            "recent": list(self.recent),
            "hist": self.hist[: min(self.hist_count, self.p.knn_history)].tolist(),
            "hist_count": self.hist_count,
            "calib": list(self.calib),
            "raw_short": list(self.raw_short),
            "raw_long": list(self.raw_long),
            "long_sum": self.long_sum,
            "long_sq": self.long_sq,
            "peak": self.peak,
            "seen": [self.seen_lo, self.seen_hi] if math.isfinite(self.seen_lo) else None,
        }

    def restore(self, state: dict[str, Any]) -> None:
        p = self.p
        self.lo = math.inf if state["lo"] is None else float(state["lo"])
        self.hi = -math.inf if state["hi"] is None else float(state["hi"])
        self.fixed_range = bool(state["fixed_range"])
        self.n = int(state["n"])
        self.mean = [float(v) for v in state["mean"]]
        self.var = [float(v) for v in state["var"]]
        self.recent = deque((float(v) for v in state["recent"]), maxlen=p.knn_dim)
        self.hist = np.zeros((p.knn_history, p.knn_dim), dtype=np.float64)
        stored = np.asarray(state["hist"], dtype=np.float64).reshape(-1, p.knn_dim)
        self.hist[: len(stored)] = stored
        self.hist_count = int(state["hist_count"])
        self.calib = deque((float(v) for v in state["calib"]), maxlen=p.knn_calibration)
        self.raw_short = deque((float(v) for v in state["raw_short"]), maxlen=p.short_window)
        self.raw_long = deque((float(v) for v in state["raw_long"]), maxlen=p.long_window)
        self.long_sum = float(state["long_sum"])
        self.long_sq = float(state["long_sq"])
        self.peak = float(state["peak"])
        seen = state["seen"]
        self.seen_lo, self.seen_hi = (math.inf, -math.inf) if seen is None else (float(seen[0]), float(seen[1]))


register_detector_kind("anomaly", AnomalyParams)


@register("anomaly")
class AnomalyDetector(Detector):
    """One :class:`AnomalyScorer` per target on the rule's series; active while score ≥ threshold."""

    def __init__(self, rule: AnyRule) -> None:
        super().__init__(rule)
        assert isinstance(rule, DetectorRule)
        parsed = rule.detector.parsed_params()
        assert isinstance(parsed, AnomalyParams)
        self.params = parsed
        self.series = rule.detector.series
        self._scorers: dict[str, AnomalyScorer] = {}
        self._targets: dict[str, Target] = {}

    def on_sample(self, sample: Sample) -> list[Observation]:
        if sample.target is None or (self.series is not None and sample.series != self.series):
            return []
        if sample.stale:
            return [Observation(sample.target, False, sample.ts, evidence=f"{sample.series} stale", score=0.0)]
        key = sample.target.key
        self._targets[key] = sample.target
        scorer = self._scorers.get(key)
        if scorer is None:
            scorer = self._scorers[key] = AnomalyScorer(self.params, None, None)
        score = scorer.score(sample.ts, sample.value)
        active = score >= self.params.threshold
        evidence = f"{sample.series} = {sample.value:g} anomalous (score {score:.2f})" if active else ""
        return [Observation(sample.target, active, sample.ts, evidence=evidence, score=score)]

    def state(self) -> dict[str, Any]:
        return {"scorers": {k: s.state() for k, s in self._scorers.items()}}

    def restore(self, state: dict[str, Any], targets: dict[str, Target]) -> None:
        for key, st in state.get("scorers", {}).items():
            if key in targets:
                scorer = AnomalyScorer(self.params, None, None)
                scorer.restore(st)
                self._scorers[key] = scorer
                self._targets[key] = targets[key]
