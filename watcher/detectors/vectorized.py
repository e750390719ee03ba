"""The numpy cores of the statistical detectors, and batch versions that update a whole fleet at once.

Why one module for both paths: the per-signal detectors (:mod:`~watcher.detectors.forecast`,
:mod:`~watcher.detectors.change`, :mod:`~watcher.detectors.peer`) call the very same robust
statistics defined here on one-row arrays, and do their scalar bookkeeping with the same IEEE
operations in the same order as the batch classes do elementwise. That is what makes the promise
"the per-signal path and the vectorized path give the same results" exact (tested bit for bit),
rather than "close enough".

The batch classes assume a *dense* fleet scrape: every series has a value at every step (which is
what Docker stats and a Prometheus instant query deliver). They hold arrays of shape ``[S]`` or
``[S, K]`` for ``S`` series and are what a replay over a large recording, or a benchmark, drives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
BOOL = NDArray[np.bool_]

# ------------------------------------------------------------------------------ robust statistics


def sorted_median(values: F64, valid: BOOL) -> F64:
    """Row-wise median of the valid entries (NaN for a row with none).

    Own code rather than ``np.nanmedian`` so both paths pick the same two middle elements in the
    same way whatever the padding: invalid entries become NaN, which ``np.sort`` puts last.
    """
    filled = np.where(valid, values, np.nan)
    ordered = np.sort(filled, axis=1)
    n = valid.sum(axis=1)
    rows = np.arange(values.shape[0])
    lo = np.maximum((n - 1) // 2, 0)
    hi = np.maximum(n // 2, 0)
    with np.errstate(invalid="ignore"):
        med: F64 = (ordered[rows, lo] + ordered[rows, hi]) / 2.0
    return np.where(n > 0, med, np.nan)


def sorted_quantile(ordered: F64, n: NDArray[np.int64], q: float) -> F64:
    """Lower ``q``-quantile of each row of an already sorted (NaN-last) array with ``n`` valid."""
    rows = np.arange(ordered.shape[0])
    index = np.maximum(np.floor(q * (n - 1)).astype(np.int64), 0)
    out: F64 = ordered[rows, index]
    return np.where(n > 0, out, np.nan)


@dataclass(frozen=True, slots=True)
class TrendFit:
    """Theil-Sen fits of many rows: slope, intercept (at relative time 0), and their spread."""

    slope: F64
    intercept: F64
    confidence: F64  # fraction of pair slopes that are positive
    slope_lo: F64  # 20th percentile of the pair slopes
    slope_hi: F64  # 80th percentile


LEVEL_Q = 0.75
"""Quantile of the residuals that sets the level: the envelope's points are bucket maxima, some of
which missed the sawtooth's peak, so the median would sit under the peaks that matter; the upper
quartile tracks them and still ignores a spike (it takes a quarter of the buckets to move it)."""
SLOPE_Q_LO = 0.2
SLOPE_Q_HI = 0.8


def theil_sen(t: F64, y: F64, n: NDArray[np.int64], level_q: float = LEVEL_Q) -> TrendFit:
    """Theil's estimator on each row: the median of slopes of point pairs half a window apart.

    Rows are in time order with their ``n`` valid points as a suffix (older columns invalid).
    Why this, Theil's original (1950) split-halves form, and not the all-pairs median: it is as
    robust (a one-off spike moves at most two of the ~n/2 slopes, and the median ignores them),
    its pairs all span half the window so each slope is precise, and it costs O(n) per row
    instead of O(n^2), which is what lets the batch path refit a whole fleet at every bucket.
    The spread of the pair slopes is the trend's uncertainty for free.
    """
    cols = t.shape[1]
    half = n // 2
    npairs = n - half
    width = cols - cols // 2
    k = np.arange(width)[None, :]
    pair_valid = (k < npairs[:, None]) & (half[:, None] > 0)
    i = np.where(pair_valid, cols - n[:, None] + k, 0)
    j = np.where(pair_valid, i + half[:, None], 0)
    ti, tj = np.take_along_axis(t, i, axis=1), np.take_along_axis(t, j, axis=1)
    yi, yj = np.take_along_axis(y, i, axis=1), np.take_along_axis(y, j, axis=1)
    dt = tj - ti
    pair_valid &= dt != 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        slopes = np.where(pair_valid, (yj - yi) / np.where(pair_valid, dt, 1.0), np.nan)
    ordered = np.sort(slopes, axis=1)
    count = pair_valid.sum(axis=1)
    slope = sorted_median(slopes, pair_valid)
    positive = (pair_valid & (slopes > 0.0)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, positive / np.maximum(count, 1), np.nan)
    valid = np.arange(cols)[None, :] >= cols - n[:, None]
    resid = y - slope[:, None] * t
    resid_valid = valid & ~np.isnan(resid)
    intercept = sorted_quantile(np.sort(np.where(resid_valid, resid, np.nan), axis=1), resid_valid.sum(axis=1), level_q)
    return TrendFit(
        slope=slope,
        intercept=intercept,
        confidence=confidence,
        slope_lo=sorted_quantile(ordered, count, SLOPE_Q_LO),
        slope_hi=sorted_quantile(ordered, count, SLOPE_Q_HI),
    )


def runway_eta(level: float, slope: float, threshold: float) -> float:
    """Seconds until a line at ``level`` rising by ``slope``/s reaches ``threshold`` (inf: never)."""
    if level >= threshold:
        return 0.0
    if slope > 0.0:
        return (threshold - level) / slope
    return math.inf


# --------------------------------------------------------------------------------- runway (batch)

RISE_STEP_SHARE = 0.25  # a "rising step" (min_rise_steps) gains at least this share of slope x bucket


def rising_steps(y: F64, valid: BOOL, slope: F64, bucket: float, steps: int) -> BOOL:
    """Per row (points in time order, valid ones a suffix): did each of the last ``steps`` steps between
    points rise by at least ``RISE_STEP_SHARE`` of ``slope`` x ``bucket``? (``min_rise_steps``: a rise
    that lasts longer than a GC cycle's growth phase.)"""
    if steps + 1 > y.shape[1]:
        return np.zeros(y.shape[0], dtype=bool)
    last_valid = valid[:, -(steps + 1) :].all(axis=1)
    with np.errstate(invalid="ignore"):
        need = RISE_STEP_SHARE * slope * bucket
        rose = (np.diff(y[:, -(steps + 1) :], axis=1) >= need[:, None]).all(axis=1)
        result: BOOL = last_valid & (slope > 0.0) & rose
    return result


class RunwayBatch:
    """The runway forecast of :class:`~watcher.detectors.forecast.RunwayDetector` for S series.

    Per step: a drop below ``(1 - reset_drop)`` of the last closed bucket's max resets a series;
    otherwise the sample joins the open bucket (max and the time of the max), and when the time
    crosses a bucket boundary every open bucket closes, old ones expire and each row is refitted.
    """

    def __init__(
        self,
        n: int,
        *,
        bucket: float,
        window: float,
        min_buckets: int,
        reset_drop: float,
        min_confidence: float,
        within: float,
        min_rise_steps: int = 0,
    ) -> None:
        self.n = n
        self.bucket = bucket
        self.min_rise_steps = min_rise_steps
        self.window = window
        self.min_buckets = min_buckets
        self.reset_drop = reset_drop
        self.min_confidence = min_confidence
        self.within = within
        self.cap = capacity(window, bucket)
        self.bt = np.zeros((n, self.cap))
        self.by = np.zeros((n, self.cap))
        self.bvalid = np.zeros((n, self.cap), dtype=bool)
        self.pos = 0
        self.cur_idx: float | None = None
        self.cur_t = np.full(n, np.nan)
        self.cur_max = np.full(n, np.nan)
        self.last_max = np.full(n, np.nan)
        self.origin = np.full(n, np.nan)
        self.slope = np.full(n, np.nan)
        self.intercept = np.full(n, np.nan)
        self.confidence = np.full(n, np.nan)
        self.sustained = np.ones(n, dtype=bool) if min_rise_steps == 0 else np.zeros(n, dtype=bool)

    def reset(self, mask: BOOL) -> None:
        """Forget the rows in ``mask`` (a restart): they relearn from their next sample."""
        self.bvalid[mask] = False
        if self.min_rise_steps:
            self.sustained[mask] = False
        for arr in (self.cur_t, self.cur_max, self.last_max, self.origin, self.slope, self.intercept, self.confidence):
            arr[mask] = np.nan

    def step(self, ts: float, values: F64, thresholds: F64) -> tuple[BOOL, F64, F64]:
        """Feed one sample per series; returns (active, eta_s, confidence) per series."""
        idx = math.floor(ts / self.bucket)
        with np.errstate(invalid="ignore"):
            drop = values < self.last_max * (1.0 - self.reset_drop)
        if drop.any():
            self.reset(drop)
        fresh = np.isnan(self.cur_max)  # never seen, or reset just now: the sample opens a bucket
        if self.cur_idx is not None and idx != self.cur_idx:
            closing = ~fresh
            col = self.pos % self.cap
            self.pos += 1
            self.bt[:, col] = self.cur_t
            self.by[:, col] = self.cur_max
            self.bvalid[:, col] = closing
            self.last_max = np.where(closing, self.cur_max, self.last_max)
            self.bvalid &= self.bt >= ts - self.window
            self._refit(closing)
            self.cur_t = np.where(closing, ts, self.cur_t)
            self.cur_max = np.where(closing, values, self.cur_max)
        else:
            higher = values > self.cur_max
            self.cur_t = np.where(higher, ts, self.cur_t)
            self.cur_max = np.where(higher, values, self.cur_max)
        self.cur_idx = idx
        self.origin = np.where(fresh, ts, self.origin)
        self.cur_t = np.where(fresh, ts, self.cur_t)
        self.cur_max = np.where(fresh, values, self.cur_max)
        return self._observe(ts, thresholds)

    def _refit(self, rows: BOOL) -> None:
        enough = rows & (self.bvalid.sum(axis=1) >= self.min_buckets)
        if not enough.any():
            self.slope = np.where(rows, np.nan, self.slope)
            return
        order = (self.pos + np.arange(self.cap)) % self.cap  # oldest column first
        n = self.bvalid.sum(axis=1)
        fit = theil_sen(self.bt[:, order] - self.origin[:, None], self.by[:, order], n)
        self.slope = np.where(rows, np.where(enough, fit.slope, np.nan), self.slope)
        self.intercept = np.where(rows, np.where(enough, fit.intercept, np.nan), self.intercept)
        self.confidence = np.where(rows, np.where(enough, fit.confidence, np.nan), self.confidence)
        if self.min_rise_steps:
            ok = rising_steps(self.by[:, order], self.bvalid[:, order], fit.slope, self.bucket, self.min_rise_steps)
            self.sustained = np.where(rows, enough & ok, self.sustained)

    def _observe(self, ts: float, thresholds: F64) -> tuple[BOOL, F64, F64]:
        level = self.intercept + self.slope * (ts - self.origin)
        with np.errstate(invalid="ignore", divide="ignore"):
            eta = np.where(
                level >= thresholds, 0.0, np.where(self.slope > 0.0, (thresholds - level) / self.slope, np.inf)
            )
        known = ~np.isnan(self.slope) & ~np.isnan(thresholds)
        eta = np.where(known, eta, np.nan)
        with np.errstate(invalid="ignore"):
            reached = (eta == 0.0) & (np.fmax(self.cur_max, self.last_max) >= thresholds)
        active = known & (reached | ((self.confidence >= self.min_confidence) & (eta <= self.within) & self.sustained))
        return active, eta, self.confidence


def capacity(window: float, bucket: float) -> int:
    """How many closed buckets a window can hold (a hard memory bound per series)."""
    return int(window // bucket) + 2


# ---------------------------------------------------------------------------------- CUSUM (batch)


class CusumBatch:
    """One-sided (or two-sided) CUSUM against each series' own baseline, for S series at once.

    Warm-up: Welford mean/variance of the first ``warmup`` samples. Then, per sample, with
    ``scale = max(sigma, min_shift, 1e-12)``, allowance ``K = max(k*scale, min_shift)``, decision
    interval ``H = h*scale`` and each increment capped at ``H/3`` (so a lone spike can never fire,
    it takes a sustained shift of at least four samples): ``S = min(max(0, S + x - mu - K), 2H)``.
    While the sum stays under ``H/2`` the baseline follows the series slowly (EWMA ``adapt`` of the
    deviation clipped at 3 scales): adapting only when the sum is exactly zero would keep only the
    low samples, drag the baseline down, shrink the variance and end in false alarms.
    """

    def __init__(
        self, n: int, *, warmup: int, k: float, h: float, min_shift: float, adapt: float, up: bool, down: bool
    ) -> None:
        self.warmup = warmup
        self.k = k
        self.h = h
        self.min_shift = min_shift
        self.adapt = adapt
        self.up = up
        self.down = down
        self.count = np.zeros(n)
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)  # Welford sum of squares during warm-up, then the EWMA variance
        self.s_up = np.zeros(n)
        self.s_dn = np.zeros(n)

    def step(self, values: F64) -> tuple[BOOL, F64]:
        """Feed one sample per series; returns (active, score = S/H) per series."""
        warming = self.count < self.warmup
        count = self.count + 1.0
        delta = values - self.mean
        wmean = self.mean + delta / count
        wm2 = self.m2 + delta * (values - wmean)
        done = warming & (count == self.warmup)
        with np.errstate(invalid="ignore", divide="ignore"):
            wm2 = np.where(done, wm2 / np.maximum(count - 1.0, 1.0), wm2)
        # detection for the warmed-up rows
        sigma = np.sqrt(self.m2)
        scale = np.maximum(np.maximum(sigma, self.min_shift), 1e-12)
        allowance = np.maximum(self.k * scale, self.min_shift)
        limit = self.h * scale
        cap = limit / 3.0
        s_up = np.minimum(np.maximum(self.s_up + np.minimum(delta - allowance, cap), 0.0), 2.0 * limit)
        s_dn = np.minimum(np.maximum(self.s_dn + np.minimum(-delta - allowance, cap), 0.0), 2.0 * limit)
        if not self.up:
            s_up = np.zeros_like(s_up)
        if not self.down:
            s_dn = np.zeros_like(s_dn)
        quiet = np.maximum(s_up, s_dn) < limit / 2.0
        d = np.minimum(np.maximum(delta, -3.0 * scale), 3.0 * scale)
        amean = np.where(quiet, self.mean + self.adapt * d, self.mean)
        am2 = np.where(quiet, self.m2 + self.adapt * (d * d - self.m2), self.m2)
        self.mean = np.where(warming, wmean, amean)
        self.m2 = np.where(warming, wm2, am2)
        self.s_up = np.where(warming, 0.0, s_up)
        self.s_dn = np.where(warming, 0.0, s_dn)
        self.count = np.where(warming, count, self.count)
        stat = np.maximum(self.s_up, self.s_dn)
        active = ~warming & (stat > limit)
        score = np.where(warming, 0.0, stat / limit)
        return active, score


# ----------------------------------------------------------------------------------- peer (batch)


def peer_scores(
    values: F64, valid: BOOL, *, rel_floor: float, min_deviation: float, min_peers: int
) -> tuple[F64, BOOL]:
    """Robust z of each replica against its service: ``(x - median) / max(1.4826*MAD, floors)``.

    ``values`` is ``[services, replicas]``; rows with fewer than ``min_peers + 1`` valid replicas
    get no score (NaN): comparing against one sibling cannot say which of the two is odd.
    """
    med = sorted_median(values, valid)
    dev = np.abs(values - med[:, None])
    mad = sorted_median(dev, valid)
    scale = np.maximum(np.maximum(1.4826 * mad, rel_floor * np.abs(med)), min_deviation)
    scale = np.maximum(scale, 1e-12)
    enough = valid.sum(axis=1) >= min_peers + 1
    with np.errstate(invalid="ignore"):
        z = (values - med[:, None]) / scale[:, None]
    ok = valid & enough[:, None]
    return np.where(ok, z, np.nan), ok


class PeerBatch:
    """Peer comparison for a fleet laid out as ``[services, replicas]`` (NaN = no replica)."""

    def __init__(self, *, k: float, rel_floor: float, min_deviation: float, min_peers: int, both: bool) -> None:
        self.k = k
        self.rel_floor = rel_floor
        self.min_deviation = min_deviation
        self.min_peers = min_peers
        self.both = both

    def step(self, values: F64) -> tuple[BOOL, F64]:
        """Returns (active, z) of every replica."""
        valid = ~np.isnan(values)
        z, ok = peer_scores(
            values, valid, rel_floor=self.rel_floor, min_deviation=self.min_deviation, min_peers=self.min_peers
        )
        with np.errstate(invalid="ignore"):
            over = np.abs(z) > self.k if self.both else z > self.k
        return ok & over, z
