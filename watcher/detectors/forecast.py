"""Runway forecast: how many seconds until a series reaches its limit (memory, disk, fds, queues).

How it avoids the three classic false alarms:

* **Garbage-collection sawtooth**: the trend is fitted to an *upper envelope*: the maximum of each
  ``bucket`` (and the time of that maximum), never to raw points. What kills a container is the
  peak of the sawtooth, and the peaks rise only as fast as the leak.
* **A one-off spike**: the envelope is fitted with Theil's estimator (median of the slopes of
  bucket pairs half a window apart, median intercept), which one high bucket hardly moves; the
  fit also needs ``min_confidence`` of those slopes to be positive before it may say "rising".
* **The drop after a restart**: a value below ``(1 - reset_drop)`` of the last bucket's maximum,
  or a Docker start/restart/die/oom event for the target, resets the series; it then relearns.
* **The first cycle of a sawtooth** (or a model loading after a start), seen by a detector with no
  history yet: its rise is a leak's rise until the drop comes. ``min_rise_steps`` asks for that many
  consecutive bucket-to-bucket rises, each at least a quarter of the fitted slope over a bucket: a
  rise that lasts longer than a GC cycle's growth phase, which a leak's does and a sawtooth's does not.

**Evidence sized to the time left** (``urgent``). The envelope needs ``min_buckets`` closed buckets
and ``min_rise_steps`` rising ones, which a leak that kills in ten seconds never gives it. So the raw
points also feed a second, short path: the current *rise* (points since the last drop, each no lower
than the one before by more than half the rise's mean step), the *new ground* it has covered (the
time since it crossed the highest value of the window before it began), and its recent slope. It
fires when the time left to the threshold is at most ``urgent`` times the time spent on new ground,
with ``urgent_points`` points on the rise: a slope that reaches the limit within a sampling period
or two acts on two points; a slow rise needs as long a rise as the time it has left (and the
envelope path is faster for it anyway). A GC sawtooth that has been seen once covers no new ground
(its peaks do not rise), and its first cycle fires only if it climbs past roughly 40 % of the
headroom in one go: sample for sample, that is a leak that would kill within seconds.

The limit is a number or the name of a series giving it per target (``memory_limit_bytes`` from
Docker stats), so the same detector serves any "series towards a limit". The arithmetic lives in
:mod:`watcher.detectors.vectorized`, shared with the fleet-wide batch path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from watcher.detectors.base import Detector, DetectorConfigError, Observation
from watcher.detectors.params import RunwayParams as RunwayParams  # re-exported: its old home
from watcher.detectors.vectorized import capacity, rising_steps, runway_eta, theil_sen
from watcher.model import Lifecycle, LifecycleKind, Sample, Target
from watcher.rulepack.schema import AnyRule

RESET_EVENTS = frozenset({LifecycleKind.START, LifecycleKind.RESTART, LifecycleKind.DIE, LifecycleKind.OOM})


@dataclass(slots=True)
class _Rise:
    """The urgent path's view of one series: the rise since its last drop, raw points, not buckets."""

    start_t: float
    start_y: float
    prior_peak: float  # the highest value of the window before the rise began: ground already covered
    points: int = 1  # on the rise, its start included
    recent: list[tuple[float, float]] = field(default_factory=list)  # the last three points
    crossed_at: float | None = None  # when the rise passed ``prior_peak``: its time on new ground starts

    def add(self, ts: float, value: float) -> bool:
        """Extend the rise by a point; False when the point ends it (it fell by more than half a mean step)."""
        last_t, last_y = self.recent[-1] if self.recent else (self.start_t, self.start_y)
        step = (last_y - self.start_y) / (self.points - 1) if self.points > 1 else 0.0
        if value < last_y - 0.5 * max(step, 0.0) or ts <= last_t:
            return False
        if self.crossed_at is None and value > self.prior_peak:
            below = max(self.prior_peak - last_y, 0.0)
            self.crossed_at = last_t + (ts - last_t) * below / (value - last_y) if value > last_y else ts
        self.points += 1
        self.recent = [*self.recent[-2:], (ts, value)]
        return True

    def slope(self) -> float:
        """The rise's slope over its last step: a leak's first step is partly baseline (it began between
        samples), and a sawtooth held at its peak shows a flat last step, which is no runway at all."""
        (t0, y0), (t1, y1) = ([(self.start_t, self.start_y), *self.recent])[-2:]
        return (y1 - y0) / (t1 - t0) if t1 > t0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "start": [self.start_t, self.start_y],
            "prior_peak": self.prior_peak,
            "points": self.points,
            "recent": [list(p) for p in self.recent],
            "crossed_at": self.crossed_at,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Rise:
        r = cls(float(d["start"][0]), float(d["start"][1]), float(d["prior_peak"]), int(d["points"]))
        r.recent = [(float(t), float(y)) for t, y in d.get("recent", [])]
        r.crossed_at = None if d.get("crossed_at") is None else float(d["crossed_at"])
        return r


@dataclass(slots=True)
class _Series:
    """One target's envelope: closed buckets (time of max, max) and the open one."""

    origin: float
    cur_idx: int
    cur_t: float
    cur_max: float
    buckets: list[tuple[float, float]] = field(default_factory=list)
    last_max: float | None = None
    slope: float | None = None
    intercept: float = 0.0
    confidence: float = 0.0
    slope_lo: float = 0.0
    slope_hi: float = 0.0
    last_ts: float = 0.0
    active: bool = False
    rise: _Rise | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "cur_idx": self.cur_idx,
            "cur_t": self.cur_t,
            "cur_max": self.cur_max,
            "buckets": [list(b) for b in self.buckets],
            "last_max": self.last_max,
            "fit": None
            if self.slope is None
            else [self.slope, self.intercept, self.confidence, self.slope_lo, self.slope_hi],
            "last_ts": self.last_ts,
            "active": self.active,
            "rise": None if self.rise is None else self.rise.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Series:
        s = cls(float(d["origin"]), int(d["cur_idx"]), float(d["cur_t"]), float(d["cur_max"]))
        s.buckets = [(float(t), float(y)) for t, y in d.get("buckets", [])]
        s.last_max = None if d.get("last_max") is None else float(d["last_max"])
        fit = d.get("fit")
        if fit is not None:
            s.slope, s.intercept, s.confidence, s.slope_lo, s.slope_hi = (float(v) for v in fit)
        s.last_ts = float(d.get("last_ts", 0.0))
        s.active = bool(d.get("active", False))
        rise = d.get("rise")
        s.rise = None if rise is None else _Rise.from_json(rise)
        return s


def _fmt(value: float) -> str:
    """Human units for bytes-like magnitudes, plain %g for small ones."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:.4g}"


class RunwayDetector(Detector):
    """Per target: a robust trend of the series' upper envelope, extrapolated to the limit."""

    kind: ClassVar[str] = "forecast"
    params_model: ClassVar[type[BaseModel] | None] = RunwayParams

    def __init__(self, rule: AnyRule) -> None:
        super().__init__(rule)
        spec = getattr(rule, "detector_spec", None)
        if not callable(spec):
            raise DetectorConfigError(f"rule {rule.id!r}: forecast needs a detector or forecast rule")
        ds = spec()
        if not ds.series:
            raise DetectorConfigError(f"rule {rule.id!r}: forecast needs a series")
        params = ds.parsed_params()
        assert isinstance(params, RunwayParams)
        self.params = params
        self.series: str = ds.series
        self.limit_series: str | None = params.limit if isinstance(params.limit, str) else None
        self.limit_value: float | None = float(params.limit) if not isinstance(params.limit, str) else None
        self.cap = capacity(params.window, params.bucket)
        self._state: dict[str, _Series] = {}
        self._limits: dict[str, float] = {}
        self._targets: dict[str, Target] = {}

    # -- signals -------------------------------------------------------------------------------
    def on_lifecycle(self, event: Lifecycle) -> list[Observation]:
        if event.kind not in RESET_EVENTS:
            return []
        st = self._state.pop(event.target.key, None)
        if st is not None and st.active:
            return [Observation(event.target, False, event.ts, evidence=f"reset by docker {event.kind.value}")]
        return []

    def on_sample(self, sample: Sample) -> list[Observation]:
        if sample.target is None:
            return []
        key = sample.target.key
        if sample.stale:
            # the series went unrefreshed (Prometheus unreachable, the series gone): the points
            # before the gap say nothing about the trend after it, so relearn rather than fit across
            st = self._state.pop(key, None) if sample.series == self.series else None
            if st is not None and st.active:
                return [Observation(sample.target, False, sample.ts, evidence=f"{self.series} stale: forecast reset")]
            return []
        if sample.series == self.limit_series:
            if sample.value > 0:
                self._limits[key] = sample.value
            return []
        if sample.series != self.series:
            return []
        self._targets[key] = sample.target
        return self.update(key, sample.ts, sample.value)

    def update(self, key: str, ts: float, value: float) -> list[Observation]:
        """The per-signal step (exactly what :class:`~watcher.detectors.vectorized.RunwayBatch` does)."""
        p = self.params
        idx = math.floor(ts / p.bucket)
        st = self._state.get(key)
        was_active = st.active if st is not None else False
        if st is not None and st.last_max is not None and value < st.last_max * (1.0 - p.reset_drop):
            st = None  # a restart (or a limit change): relearn
        if st is None:
            st = self._state[key] = _Series(origin=ts, cur_idx=idx, cur_t=ts, cur_max=value)
        elif idx != st.cur_idx:
            st.buckets.append((st.cur_t, st.cur_max))
            st.last_max = st.cur_max
            if len(st.buckets) > self.cap:
                del st.buckets[0]
            st.buckets = [b for b in st.buckets if b[0] >= ts - p.window]
            self._refit(st)
            st.cur_idx, st.cur_t, st.cur_max = idx, ts, value
        elif value > st.cur_max:
            st.cur_t, st.cur_max = ts, value
        st.last_ts = ts
        if p.urgent > 0:
            self._track_rise(st, ts, value)
        obs = self._observe_urgent(key, st, ts, value) or self._observe(key, st, ts)
        if obs is None:
            st.active = False
            if was_active:
                return [Observation(self._targets[key], False, ts, evidence="forecast reset")]
            return []
        st.active = obs.active
        return [obs]

    @staticmethod
    def _track_rise(st: _Series, ts: float, value: float) -> None:
        """Extend the current rise, or start one here (this point is its bottom) if it ended."""
        if st.rise is not None and st.rise.add(ts, value):
            return
        peak = max([b[1] for b in st.buckets] + [st.cur_max])  # the window so far, this point included
        st.rise = _Rise(ts, value, prior_peak=peak)

    def _observe_urgent(self, key: str, st: _Series, ts: float, value: float) -> Observation | None:
        """An active observation when the runway is short for the evidence the rise has given; else None."""
        p = self.params
        rise = st.rise
        limit = self.limit_of(key)
        if p.urgent <= 0 or rise is None or limit is None or rise.points < p.urgent_points or rise.crossed_at is None:
            return None
        slope = rise.slope()
        threshold = p.fraction * limit
        eta = runway_eta(value, slope, threshold)
        new_ground = ts - rise.crossed_at
        if new_ground <= 0 or eta > p.urgent * new_ground or eta > p.within:
            return None
        evidence = (
            f"{self.series} at {_fmt(value)} rising {_fmt(slope)}/s reaches {p.fraction:.0%} of {_fmt(limit)} "
            f"in ~{eta:.0f}s: a short runway, acted on after {new_ground:.0f}s of rise above the window's "
            f"peak ({rise.points} points)"
        )
        return Observation(self._targets[key], True, ts, evidence=evidence, score=1.0, eta_s=eta)

    def _refit(self, st: _Series) -> None:
        if len(st.buckets) < self.params.min_buckets:
            st.slope = None
            return
        t = np.array([[b[0] for b in st.buckets]]) - st.origin
        y = np.array([[b[1] for b in st.buckets]])
        fit = theil_sen(t, y, np.array([t.shape[1]]))
        st.slope = float(fit.slope[0])
        st.intercept = float(fit.intercept[0])
        st.confidence = float(fit.confidence[0])
        st.slope_lo = float(fit.slope_lo[0])
        st.slope_hi = float(fit.slope_hi[0])

    def _sustained(self, st: _Series) -> bool:
        """The last ``min_rise_steps`` steps between closed buckets each rose by a share of the trend."""
        n = self.params.min_rise_steps
        if n == 0:
            return True
        if st.slope is None:
            return False
        y = np.array([[b[1] for b in st.buckets]])
        return bool(rising_steps(y, np.ones(y.shape, dtype=bool), np.array([st.slope]), self.params.bucket, n)[0])

    def limit_of(self, key: str) -> float | None:
        return self.limit_value if self.limit_value is not None else self._limits.get(key)

    def _observe(self, key: str, st: _Series, ts: float) -> Observation | None:
        limit = self.limit_of(key)
        if st.slope is None or limit is None:
            return None
        p = self.params
        threshold = p.fraction * limit
        level = st.intercept + st.slope * (ts - st.origin)
        eta = runway_eta(level, st.slope, threshold)
        # past the threshold counts without a trend's proof only where the series itself got there: a
        # fit over the first few buckets of a sawtooth met at its peak extrapolates far above its data
        reached = eta == 0.0 and max(st.cur_max, st.last_max or 0.0) >= threshold
        active = reached or (st.confidence >= p.min_confidence and eta <= p.within and self._sustained(st))
        evidence = ""
        if active:
            lo = runway_eta(level, st.slope_hi, threshold)
            hi = runway_eta(level, st.slope_lo, threshold)
            band = f"{lo:.0f}-{hi:.0f}s" if math.isfinite(hi) else f">{lo:.0f}s"
            evidence = (
                f"{self.series} at {_fmt(level)} rising {_fmt(st.slope)}/s reaches "
                f"{p.fraction:.0%} of {_fmt(limit)} in ~{eta:.0f}s (band {band}, "
                f"{st.confidence:.0%} of slopes rising)"
            )
        return Observation(
            self._targets[key], active, ts, evidence=evidence, score=st.confidence, eta_s=eta if active else None
        )

    def eta(self, key: str, ts: float) -> float | None:
        """The current forecast for a target (inf when not rising), or None with no fit yet."""
        st = self._state.get(key)
        limit = self.limit_of(key)
        if st is None or st.slope is None or limit is None:
            return None
        level = st.intercept + st.slope * (ts - st.origin)
        return runway_eta(level, st.slope, self.params.fraction * limit)

    def etas(self, ts: float) -> dict[str, float]:
        """Every fitted target's current forecast (inf when not rising): the runway gauge."""
        out: dict[str, float] = {}
        for key in list(self._state):
            eta = self.eta(key, ts)
            if eta is not None:
                out[key] = eta
        return out

    def on_tick(self, now: float) -> list[Observation]:
        """Forget targets that stopped reporting for a whole window (bounded memory)."""
        out: list[Observation] = []
        for key in [k for k, s in self._state.items() if s.last_ts < now - self.params.window]:
            st = self._state.pop(key)
            if st.active:
                out.append(Observation(self._targets[key], False, now, evidence=f"{self.series} stopped reporting"))
        return out

    def next_tick_at(self, now: float) -> float:
        """When the longest-silent series has been silent a whole window (``on_tick`` forgets it)."""
        return min((s.last_ts + self.params.window for s in self._state.values()), default=math.inf)

    # -- checkpoint ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "series": {k: s.to_json() for k, s in self._state.items()},
            "limits": dict(self._limits),
        }

    def restore(self, state: dict[str, Any], targets: dict[str, Target]) -> None:
        for key, d in state.get("series", {}).items():
            if key in targets:
                self._targets[key] = targets[key]
                self._state[key] = _Series.from_json(d)
        for key, v in state.get("limits", {}).items():
            self._limits[key] = float(v)
