"""General-purpose streaming anomaly scoring for metric series (rule kind ``detector: {kind: anomaly}``).

The same class, with the same defaults, scores every metric stream in production and runs the
Numenta Anomaly Benchmark (``python -m testbed eval nab``, ``python -m benchmarks.nab``), so the benchmark
figure is the figure of what actually runs. The two settings differ in what is known in advance: NAB
gives each file's min/max and its probationary length; a live metric gives neither.

Design: four channels, each good where the others are weak, and the score is the largest of them.

1. **Context channel** (CAD-OSE's idea, Smirnov 2016, contextOSE on NAB's scoreboard;
   :class:`_ContextMemory`). The value is scaled by its range (known, or seen so far) and quantised to
   ``context_bits`` bits; those bits plus the contexts that fired last step are this step's *facts*.
   The score is the share of contexts the previous step predicted that did not fire, plus the share of
   contexts that had to be created. It learns the *sequence* of a series, so it sees a changed
   daily shape, a missing dip or a stuck value that no mean or deviation notices.
   Its weakness is noise: i.i.d. values keep producing unseen contexts, so a noisy series scores about
   0.35 on average with a thin tail above the threshold, and an incident keeps creating contexts
   for many points. Hence the **rest period**: after a context score at or above ``rest_level`` the
   context channel is silent for ``rest`` points (``rest_fraction`` of the probationary length when
   that is known, as CAD-OSE's P/5). NAB credits only the first detection in a window and charges
   every false one; an operator wants one page per incident, not one per point.

2. **Level channel**: an ensemble of cheap online models, on raw values,
   * *multi-scale Gaussian*: the deviation from exponentially weighted means at several time scales
     in units of that scale's deviation (spikes, level shifts, slow drifts);
   * *nearest-neighbour context* (KNN-CAD's idea): the distance of the latest short subsequence to its
     nearest past ones, ranked against recent such distances;
   * *new extreme* (Numenta's "spatial anomaly"): a value beyond everything seen, by a margin.
   The surprise is ``max(min(gauss, knn), extreme)``: the two models must agree unless the value is
   out of all past range, which keeps one model's quirk from paging. It is turned into Numenta's
   *anomaly likelihood*, the one-sided z of the surprise against its own long-run distribution,
   squashed to ``z / (z + z_scale)`` and weighted by ``blend``. A noisy series thus raises its own
   bar, and only a decisive event (z above about 20 at the default threshold: a spike or shift of
   several standard deviations) reaches the threshold; ``blend`` < 1 keeps moderate level surprises
   below the context channel's alarms (``blend`` 1 cost about 1.6 standard points on NAB).
   Raw units, not scaled ones, matter in production: with the range unknown, a spike widens the range
   that scales it, and in scaled units shrank its own deviation (a 15 sd spike read as about 5 sd).
   A z-score in raw units does not depend on the scale; only the deviation floor (``var_floor`` of
   the range) does, and with a known range the result equals the scaled computation up to rounding.
   The level channel is **not** rested: a rest started by the context channel's occasional false
   alarm on a noisy series would otherwise hide a real spike or shift for ``rest`` points. It needs
   no rest of its own: the models adapt to a new level within a few points (the neighbour model finds
   the new subsequences among its own past), so after a shift the channel falls back below the
   threshold at once (a unit test pins this). Letting a level alarm also rest the context channel
   was tried; it cost about two standard points on NAB.

3. **Seasonal channel** (:class:`_Seasonal`, one per period in ``seasonal_periods``: a day and a
   week). A per-phase profile of past cycles predicts each value; the residual is z-scored against the
   residuals' own spread. The score is not that z, whose scale differs from series to series, but its
   *record ratio* r, the z over the largest z seen so far in the series, scored
   ``seasonal_weight · (1 - r^-seasonal_power)``: only a residual several times (about 3.7 at the
   NAB-optimised threshold) any earlier one pages, so each series calibrates itself, which one corpus-
   wide threshold needs. It sees what the other two cannot when every single value is ordinary and only
   its *time* is wrong: a daily rise that does not come (NAB's art_daily_nojump; a unit test pins it),
   a weekday that looks like a Sunday. It has its own rest (same length as the context channel's;
   sharing one rest cost 1.5 points). The period in points comes from the first interval, the phase from
   the timestamp; periods under 4 or over ``seasonal_max_points`` points (memory) are off, so on a
   fast-scraped live metric only the daily profile may run, or none. It is blind to slow deviations
   (a peak that fades over hours inflates the residual spread as it grows: no record) and, once a
   huge break was seen, to smaller later ones. Records are counted only after the warm-up and after
   ``seasonal_min_records`` residual z-scores.

4. **Resonance channel** (ARTime's idea, adaptive resonance theory; :class:`~watcher.detectors.resonance.
   Resonance`). The scaled series is cut into blocks (``resonance_blocks`` per probation length on NAB,
   so a block is a fixed share of the series' own time scale; ``resonance_downsample`` points live), the
   last ``resonance_window`` block means form one input to a fuzzy ART memory, and the input's
   *mismatch* (how far the best learnt category box must stretch to take it in) is scored by its record
   ratio like the seasonal residual, with a steep power, so that it is nearly a switch: a window of
   hours that is farther from every shape ever seen than any window before it. The memory never
   forgets, unlike the neighbour model's last thousand points, so it sees a shape that is new to the
   whole series even when each value and each short subsequence is ordinary (a slow swell, a changed
   day in nyc_taxi, ambient_temperature, a Twitter volume). It has its own rest, and it also rests after
   any other channel's alarm (score at or above ``threshold``): its window spans hours, so an incident
   another channel paged for reaches it later, as a second page (this also keeps the unit-tested one
   alarm per spike in production). Costs one small matrix product per block.

5. **Warm-up**: nothing above 0 for the first ``learning`` points.

On NAB (full corpus, one parameter set) this scores 75.30 standard, 71.42 reward_low_FP and 78.94
reward_low_FN (threshold 0.776 for all three). Without the resonance channel it scored 72.77 / 68.94 /
76.38, without the seasonal channel too 70.70 / 67.01 / 74.14, the context channel alone 69.77 / 66.86 /
72.95. Per category (raw standard score at that threshold, windows): artificialNoAnomaly -0.22 (0),
artificialWithAnomaly 4.33 (6), realAWSCloudwatch 14.12 (30), realAdExchange 6.16 (14), realKnownCause
1.81 (19), realTraffic 11.64 (14), realTweets 20.86 (33); the seasonal channel's gain is in
realKnownCause, realAWSCloudwatch and the artificial files; the resonance channel adds six alarms, four
of them first detections (nyc_taxi, ambient_temperature_system_failure, ec2_cpu_utilization_77c1ca,
Twitter_volume_KO) and two false (ec2_cpu_utilization_ac20cd, Twitter_volume_CVS). That gain rests on few
windows and is sensitive to the resonance settings: neighbouring window lengths, block counts or
vigilances score between 72.3 and 75.3 standard (a grid over 6-16 blocks per window, 40-150 blocks per
probation, vigilance 0.8-0.95); the record settings (power 16-25, rest level 0.75-0.78, 10-40 records)
do not move it.
Tried on NAB and left out (no gain beyond noise, or a loss): a second context memory on a downsampled
series (mean, or ARTime's extreme-preserving downsampling, 3 or 4 bits), 2 or 4 context bits, 10 or 25
active contexts (25: +0.4 at twice the cost), context scores normalised by their running mean, tie
breaks of context scores by the level channel, a rest on the level channel, record-ratio channels on the
level surprise, on a multi-scale mean shift and on a downsampled nearest-neighbour distance, a pre-
smoothed seasonal profile, 1 h / 4 h / 12 h / 2 day / 2 week periods, a decaying record; for the
resonance channel, an extreme-preserving block reduction instead of the mean, a slower ART learning
rate (0.5), a second resonance memory at another block size (+0.2 at most).
In production (range and probation unknown) a 15 sd spike or an 8 sd level shift on a noisy series
alarms at once and then stays quiet (unit tests pin both), but with little margin: the shift's onset
scores 0.76 and the spike 0.78 against the 0.75 threshold, so a shift of a few sd on a noisy series may
not page. Pure noise still draws an occasional context alarm (2 in 3000 points in the unit test).
Cost is dominated by the context memory, which grows on noisy series: under 1 ms a point; the seasonal
channel adds a few microseconds and one float per point of each period (a week at 5 min: 2016); the
resonance channel one vectorised step per block over its categories (30 on average on NAB, at most 197;
capped at ``resonance_max_categories``, 24 floats each). A full NAB run takes about 3 to 4.5 minutes on
two busy cores.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from watcher.detectors.base import Detector, Observation
from watcher.detectors.params import AnomalyParams as AnomalyParams  # re-exported: its old home
from watcher.detectors.resonance import Resonance
from watcher.model import Sample, Target
from watcher.rulepack.schema import AnyRule, DetectorRule


def _surprise(z: float) -> float:
    """-log10 of the two-sided Gaussian tail probability of a z-score (asymptotic form far out)."""
    a = abs(z)
    if a < 8.0:
        return -math.log10(max(math.erfc(a / math.sqrt(2.0)), 1e-300))
    # erfc(x) ~ exp(-x²)/(x√π): keeps growing where erfc itself underflows
    x = a / math.sqrt(2.0)
    return (x * x + math.log(x * math.sqrt(math.pi))) / math.log(10.0)


class _ContextMemory:
    """CAD-OSE's idea (Smirnov 2016), re-implemented: contexts are pairs (left facts, right facts).

    Each step's input is a small set of *facts* (the quantised value's bits, plus the ids of the
    contexts that fired last step). A context (L, R) fires when the previous step's facts contain L
    and this step's contain R. Surprise = the share of the contexts *predicted* by the previous step
    (L fully present) that did not fire, plus the share of new contexts that had to be created.
    """

    def __init__(self, max_left: int, max_active: int) -> None:
        self.max_left = max_left
        self.max_active = max_active
        # semi-contexts per side: facts tuple -> id; per id: size, matched facts, per-left: {right id: ctx id}
        self.ids: tuple[dict[tuple[int, ...], int], dict[tuple[int, ...], int]] = ({}, {})
        self.size: tuple[list[int], list[int]] = ([], [])
        self.by_fact: tuple[dict[int, list[int]], dict[int, list[int]]] = ({}, {})
        self.links: list[dict[int, int]] = []  # left semi-context id -> {right id: context id}
        self.ctx_count: list[int] = []
        self.ctx_zero: list[bool] = []
        self.matched_left: dict[int, list[int]] = {}  # left ids crossed with the previous left group
        self.left_group: tuple[int, ...] = ()

    def _semi(self, side: int, facts: tuple[int, ...]) -> int:
        ids = self.ids[side]
        sid = ids.get(facts)
        if sid is None:
            sid = ids[facts] = len(ids)
            self.size[side].append(len(facts))
            for f in facts:
                self.by_fact[side].setdefault(f, []).append(sid)
            if side == 0:
                self.links.append({})
        return sid

    def _context(self, left: tuple[int, ...], right: tuple[int, ...], zero: bool) -> tuple[int, bool]:
        lid, rid = self._semi(0, left), self._semi(1, right)
        links = self.links[lid]
        cid = links.get(rid)
        if cid is None:
            cid = links[rid] = len(self.ctx_count)
            self.ctx_count.append(0)
            self.ctx_zero.append(zero)
            return cid, True
        if zero:
            self.ctx_zero[cid] = True
        return cid, False

    @staticmethod
    def _cross(by_fact: dict[int, list[int]], facts: tuple[int, ...]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for f in facts:
            for sid in by_fact.get(f, ()):
                out.setdefault(sid, []).append(f)
        return out

    def state(self) -> dict[str, Any]:
        return {
            "left": [list(f) for f in self.ids[0]],
            "right": [list(f) for f in self.ids[1]],
            "links": [[[r, c] for r, c in links.items()] for links in self.links],
            "count": list(self.ctx_count),
            "zero": list(self.ctx_zero),
            "matched_left": [[lid, facts] for lid, facts in self.matched_left.items()],
            "left_group": list(self.left_group),
        }

    def restore(self, state: dict[str, Any]) -> None:
        for side, key in ((0, "left"), (1, "right")):
            for facts in state[key]:
                self._semi(side, tuple(int(f) for f in facts))
        self.links = [{int(r): int(c) for r, c in links} for links in state["links"]]
        self.ctx_count = [int(c) for c in state["count"]]
        self.ctx_zero = [bool(z) for z in state["zero"]]
        self.matched_left = {int(lid): [int(f) for f in facts] for lid, facts in state["matched_left"]}
        self.left_group = tuple(int(f) for f in state["left_group"])

    def step(self, facts: tuple[int, ...]) -> float:
        uniq: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        new_flag, new_cid = False, -1
        if self.left_group and facts:
            pair = (self.left_group, facts)
            uniq.add(pair)
            new_cid, new_flag = self._context(pair[0], pair[1], True)
            if not new_flag:
                new_cid = -1
        right = self._cross(self.by_fact[1], facts)
        active: list[tuple[int, int]] = []
        selected = 0
        potential: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        lsize, rsize = self.size
        for lid, lfacts in self.matched_left.items():
            full_left = len(lfacts) == lsize[lid]
            for rid, cid in self.links[lid].items():
                if cid == new_cid:
                    continue
                rf = right.get(rid)
                if full_left:
                    selected += 1
                    if rf is None:
                        continue
                    if len(rf) == rsize[rid]:
                        self.ctx_count[cid] += 1
                        active.append((self.ctx_count[cid], cid))
                        continue
                elif rf is None:
                    continue
                if self.ctx_zero[cid] and new_flag and len(lfacts) <= self.max_left:
                    potential.append((tuple(lfacts), tuple(rf)))
        uniq.update(potential)
        pct_active = len(active) / selected if selected else 0.0
        active.sort()
        neurons = [(1 << 31) + cid for _, cid in active[-self.max_active :]]
        self.left_group = tuple(sorted(set(facts).union(neurons)))
        added = sum(self._context(lf, rf, False)[1] for lf, rf in potential) + (1 if new_flag else 0)
        self.matched_left = self._cross(self.by_fact[0], self.left_group)
        pct_added = added / len(uniq) if new_flag and uniq else 0.0
        return (1.0 - pct_active + pct_added) / 2.0


class _Record:
    """The largest value counted so far in one series, and how many were counted.

    A channel whose raw scale differs from series to series (a seasonal residual's z, a resonance
    mismatch) scores a value by its ratio r to that record, ``weight · (1 - r^-power)`` for r > 1, so
    every series sets its own bar, which one corpus-wide threshold needs. Values are counted only
    after the warm-up (the first ones meet empty models and are no fair yardstick), and records only
    score once ``min_records`` values were counted."""

    __slots__ = ("best", "count", "min_records")

    def __init__(self, min_records: int) -> None:
        self.min_records = min_records
        self.best = 0.0
        self.count = 0

    def score(self, value: float, counted: bool, weight: float, power: float) -> float:
        out = 0.0
        if self.best > 0 and self.count >= self.min_records:
            r = value / self.best
            if r > 1.0:
                out = weight * (1.0 - r**-power)
        if counted:
            self.best = max(self.best, value)
            if value > 0:
                self.count += 1
        return out

    def state(self) -> list[float]:
        return [self.best, self.count]

    def restore(self, state: list[Any]) -> None:
        self.best, self.count = float(state[0]), int(state[1])


class _Seasonal:
    """One period's profile (daily or weekly) and the record ratio of its residuals.

    The profile holds, per phase of the period, an EW average of the values seen at that phase in past
    cycles; the residual is the value minus its phase's average, z-scored against the residuals' own EW
    mean and deviation (span: one period). The score is not the z itself, whose scale differs from
    series to series (a daily-shaped series with noise reaches z 5 routinely, a clean one never), but its
    ratio to the largest z seen so far: a residual several times any before it is a break in the
    series' seasonal shape (a missing weekday peak, a holiday, a night that looks like a day), which
    neither the context nor the level channel sees when every single value is an ordinary one.
    The period in points comes from the first interval; the phase from the timestamp, so gaps in a live
    series do not shift it. Periods longer than ``max_points`` (memory) or shorter than 4 points are off.
    """

    def __init__(self, period_s: float, params: AnomalyParams) -> None:
        self.period_s = period_s
        self.alpha = params.seasonal_alpha
        self.max_points = params.seasonal_max_points
        self.t0: float | None = None
        self.x0 = 0.0
        self.dt = 0.0
        self.p = 0  # points per period; 0 = not known yet, -1 = off
        self.base: list[float | None] = []
        self.res_mean = 0.0
        self.res_var = 0.0
        self.res_count = 0
        self.records = _Record(params.seasonal_min_records)  # of the residual z-scores

    def _start(self, ts: float) -> None:
        assert self.t0 is not None
        self.dt = ts - self.t0
        p = round(self.period_s / self.dt) if self.dt > 0 else 0
        if p < 4 or p > self.max_points:
            self.p = -1
            return
        self.p = p
        self.base = [None] * p
        self.base[0] = self.x0

    def z(self, ts: float, x: float, floor: float) -> float:
        """The absolute residual z of this point (0 while the profile or the residual spread is young)."""
        if self.t0 is None:
            self.t0, self.x0 = ts, x
            return 0.0
        if self.p == 0:
            self._start(ts)
        if self.p < 0:
            return 0.0
        ph = round((ts - self.t0) / self.dt) % self.p
        b = self.base[ph]
        if b is None:
            self.base[ph] = x
            return 0.0
        e = x - b
        out = 0.0
        sd = math.sqrt(self.res_var) + floor
        if self.res_count > self.p // 2 and sd > 0:
            out = abs(e - self.res_mean) / sd
        a = 2.0 / (self.p + 1.0)
        d = e - self.res_mean
        self.res_mean += a * d
        self.res_var = (1.0 - a) * (self.res_var + a * d * d)
        self.res_count += 1
        self.base[ph] = b + self.alpha * (x - b)
        return out

    def state(self) -> dict[str, Any]:
        return {
            "t0": self.t0,
            "x0": self.x0,
            "dt": self.dt,
            "p": self.p,
            "base": list(self.base),
            "res": [self.res_mean, self.res_var, self.res_count],
            "z": self.records.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.t0 = None if state["t0"] is None else float(state["t0"])
        self.x0, self.dt, self.p = float(state["x0"]), float(state["dt"]), int(state["p"])
        self.base = [None if b is None else float(b) for b in state["base"]]
        self.res_mean, self.res_var, self.res_count = (
            float(state["res"][0]),
            float(state["res"][1]),
            int(state["res"][2]),
        )
        self.records.restore(state["z"])


class AnomalyScorer:
    """The scoring core, independent of the engine: feed ``(ts, value)`` in order, get a score in [0, 1]."""

    def __init__(
        self,
        params: AnomalyParams,
        value_min: float | None = None,
        value_max: float | None = None,
        probation: int | None = None,
    ) -> None:
        self.p = params
        # NAB tells a detector its probationary length; the rest period scales with it (CAD-OSE's P/5).
        self.rest = params.rest if probation is None else int(params.rest_fraction * probation)
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
        self.seen_lo = math.inf
        self.seen_hi = -math.inf
        self.context = _ContextMemory(params.context_max_left, params.context_max_active)
        self.since_high = 1 << 62  # points since the last raw score ≥ rest_level
        self.seasonal = [_Seasonal(period, params) for period in params.seasonal_periods]
        self.since_seasonal = 1 << 62  # points since the last seasonal score ≥ seasonal_rest_level
        # Block size: a fixed share of the probation (the series' own time scale on NAB), else a default.
        block = params.resonance_downsample if probation is None else round(probation / params.resonance_blocks)
        self.resonance = Resonance(
            params.resonance_window,
            max(1, block),
            params.resonance_vigilance,
            params.resonance_beta,
            params.resonance_max_categories,
        )
        self.res_record = _Record(params.resonance_min_records)  # of the resonance mismatches
        self.since_resonance = 1 << 62  # points since the last resonance score ≥ resonance_rest_level
        self.since_alarm = 1 << 62  # points since another channel's score reached the threshold

    # ------------------------------------------------------------------------------- scaling
    def _scale(self, value: float) -> float:
        if not self.fixed_range:
            self.lo = min(self.lo, value)
            self.hi = max(self.hi, value)
        span = self.hi - self.lo
        return (value - self.lo) / span if span > 0 else 0.0

    # ------------------------------------------------------------------------------ raw models
    def _gauss(self, x: float, floor: float) -> float:
        worst = 0.0
        floor2 = floor * floor
        for j, a in enumerate(self.alphas):
            if self.n == 0:
                self.mean[j] = x
                continue
            d = x - self.mean[j]
            sd = math.sqrt(self.var[j] + floor2)
            z = d / sd if sd > 0 else 0.0
            worst = max(worst, _surprise(z) / self.p.surprise_cap)
            self.mean[j] += a * d
            self.var[j] = (1.0 - a) * (self.var[j] + a * d * d)
        return worst

    def _knn(self, x: float, floor: float) -> float:
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
                sd = math.sqrt(max(sum(c * c for c in self.calib) / m - mu * mu, 0.0)) + floor
                z = (alpha - mu) / sd if sd > 0 else 0.0
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
        bits = self.p.context_bits
        top = (1 << bits) - 1
        q = min(max(int(x * top), 0), top)
        context = self.context.step(tuple(2 * i + ((q >> i) & 1) for i in range(bits)))
        level = 0.0
        if self.p.blend > 0.0:
            # Raw units, floor a fraction of the range: z-scores do not move when an unknown range grows.
            floor = self.p.var_floor * (self.hi - self.lo)
            gauss, knn, extreme = self._gauss(value, floor), self._knn(value, floor), self._extreme(value)
            if self.p.combine == "min":
                surprise = max(min(gauss, knn), extreme)
            elif self.p.combine == "mean":
                surprise = max(0.5 * (gauss + knn), extreme)
            else:
                surprise = max(gauss, knn, extreme)
            level = self.p.blend * self._likelihood(surprise)
        seasonal = 0.0
        if self.seasonal:
            floor = self.p.var_floor * (self.hi - self.lo)
            for model in self.seasonal:
                z = model.z(ts, value, floor)
                score = model.records.score(z, self.n >= self.p.learning, self.p.seasonal_weight, self.p.seasonal_power)
                seasonal = max(seasonal, score)
        resonance = self._resonance(x)
        self.n += 1
        # Rest period of the context channel: after a context score at or above rest_level the
        # context channel is silent for `rest` points (NAB credits only the first alarm in a window and
        # charges every false one). The level channel is never silenced: its likelihood already adapts
        # to a noisy series, and a spike or shift must not hide behind a context model's false alarm.
        resting = self.since_high < self.rest
        self.since_high = 0 if context >= self.p.rest_level else self.since_high + 1
        # The seasonal channel has its own rest, of the same length: a broken weekly shape keeps setting
        # records for a while, and one alarm per incident is the aim.
        seasonal_resting = self.since_seasonal < self.rest
        self.since_seasonal = 0 if seasonal >= self.p.seasonal_rest_level else self.since_seasonal + 1
        # The resonance channel rests after its own alarm and after any other channel's: its window spans
        # hours, so it sees an incident the others already paged for late, as a second page.
        resonance_resting = self.since_resonance < self.rest or self.since_alarm < self.rest
        self.since_resonance = 0 if resonance >= self.p.resonance_rest_level else self.since_resonance + 1
        if self.n <= self.p.learning:
            return 0.0
        other = max(0.0 if resting else context, level, 0.0 if seasonal_resting else seasonal, 0.0)
        self.since_alarm = 0 if other >= self.p.threshold else self.since_alarm + 1
        if resonance_resting or self.since_alarm == 0:
            resonance = 0.0
        return min(max(other, resonance), 1.0)

    def _resonance(self, x: float) -> float:
        """Record-ratio score of the resonance mismatch (0 between block ends and while records are young).

        The mismatch's scale depends on the series (noise keeps it near 1 - vigilance), so, as in the
        seasonal channel, only its ratio r to the largest earlier one counts; the steep power makes this
        nearly a switch at r about 1.08 (at the NAB threshold): a window farther from every known shape than any
        window before it. Mismatches are counted after the warm-up only: the first windows meet an empty
        memory."""
        if self.p.resonance_weight <= 0.0:
            return 0.0
        m = self.resonance.step(x)
        if m is None:
            return 0.0
        return self.res_record.score(m, self.n >= self.p.learning, self.p.resonance_weight, self.p.resonance_power)

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
            "since_high": self.since_high,
            "context": self.context.state(),
            "seen": [self.seen_lo, self.seen_hi] if math.isfinite(self.seen_lo) else None,
            "seasonal": [m.state() for m in self.seasonal],
            "since_seasonal": self.since_seasonal,
            "resonance": self.resonance.state(),
            "res_record": self.res_record.state(),
            "since_resonance": self.since_resonance,
            "since_alarm": self.since_alarm,
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
        self.since_high = int(state["since_high"])
        self.context = _ContextMemory(p.context_max_left, p.context_max_active)
        self.context.restore(state["context"])
        seen = state["seen"]
        self.seen_lo, self.seen_hi = (math.inf, -math.inf) if seen is None else (float(seen[0]), float(seen[1]))
        for model, st in zip(self.seasonal, state.get("seasonal", []), strict=False):
            model.restore(st)
        self.since_seasonal = int(state.get("since_seasonal", 1 << 62))
        if "resonance" in state:
            self.resonance.restore(state["resonance"])
            self.res_record.restore(state["res_record"])
            self.since_resonance = int(state["since_resonance"])
            self.since_alarm = int(state["since_alarm"])


class AnomalyDetector(Detector):
    """One :class:`AnomalyScorer` per target on the rule's series; active while score ≥ threshold."""

    kind: ClassVar[str] = "anomaly"
    params_model: ClassVar[type[BaseModel] | None] = AnomalyParams

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
