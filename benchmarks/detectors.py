"""Detector cost: series points per second per core, per-signal path and vectorized path.

Each detector gets a deterministic fleet (memory leaking with a GC sawtooth, error ratios with a
few shifts, replicas grouped in services) and is timed on one core (this process, one thread;
numpy's elementwise kernels are single-threaded). The per-signal path is what the engine runs,
one :class:`~watcher.model.Sample` at a time (the Sample objects are built before timing); the
vectorized path (:mod:`watcher.detectors.vectorized`) updates every series of a scrape at once.
Log-template mining is measured in lines per second. Goal: >= 1,000,000 points/s/core vectorized.

``python -m benchmarks.detectors [--series N] [--steps T] [--quick]``
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from watcher.detectors.base import Detector
from watcher.detectors.change import ChangeParams
from watcher.detectors.forecast import RunwayParams
from watcher.detectors.peer import PeerParams
from watcher.detectors.registry import build_detector
from watcher.detectors.vectorized import CusumBatch, PeerBatch, RunwayBatch
from watcher.model import LogRecord, Sample, Target
from watcher.rulepack.schema import DetectorRule, DetectorSpec

T0 = 1_714_557_600.0
MiB = 2.0**20
STEP_S = 5.0
REPLICAS = 5


def _rule(kind: str, series: str | None, **params: Any) -> DetectorRule:
    spec = DetectorSpec.model_validate({"kind": kind, "series": series, "params": params})
    return DetectorRule.model_validate({"id": f"bench-{kind}", "predicts": "oom", "detector": spec})


def memory(n: int, steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(steps) * STEP_S
    rate = rng.uniform(0, 0.5, n)[:, None] * MiB
    saw = 40 * MiB * ((t % 45.0) / 45.0)
    return 300 * MiB + rate * t + saw + rng.normal(0, 2 * MiB, (n, steps))


def errors(n: int, steps: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = 0.01 + rng.normal(0, 0.003, (n, steps))
    v[:: max(n // 20, 1), steps // 2 :] += 0.05
    return v


def _rate(points: int, seconds: float) -> float:
    return points / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    points = fn()
    return points, time.perf_counter() - start


# ---------------------------------------------------------------------------- per-signal path


def per_signal_samples(detector: Detector, series: str, values: np.ndarray, extra: list[Sample]) -> float:
    """Points per second feeding the detector one Sample at a time, ticking after each scrape."""
    n, steps = values.shape
    targets = [Target(f"r{i}", service=f"s{i // REPLICAS}") for i in range(n)]
    for s in extra:
        detector.on_sample(s)
    samples = [
        Sample(series, T0 + k * STEP_S, float(values[i, k]), target=targets[i]) for k in range(steps) for i in range(n)
    ]

    def run() -> int:
        for j, sample in enumerate(samples):
            detector.on_sample(sample)
            if j % n == n - 1:
                detector.on_tick(sample.ts)
        return len(samples)

    return _rate(*timed(run))


def bench_per_signal(n: int, steps: int) -> dict[str, float]:
    out: dict[str, float] = {}
    mem = memory(n, steps)
    limits = [
        Sample("memory_limit_bytes", T0, 2048 * MiB, target=Target(f"r{i}", service=f"s{i // REPLICAS}"))
        for i in range(n)
    ]
    d = build_detector(_rule("forecast", "memory_working_set_bytes", limit="memory_limit_bytes", within="2m"))
    out["forecast"] = per_signal_samples(d, "memory_working_set_bytes", mem, limits)
    err = errors(n, steps)
    d = build_detector(_rule("change", "error_ratio", min_shift=0.01))
    out["change"] = per_signal_samples(d, "error_ratio", err, [])
    d = build_detector(_rule("peer", "error_ratio"))
    out["peer"] = per_signal_samples(d, "error_ratio", err, [])
    d = build_detector(_rule("predictor", None, error_series="error_ratio"))
    out["predictor (memory series)"] = per_signal_samples(d, "memory_working_set_bytes", mem, limits)
    out["templates (lines)"] = bench_templates(min(n * steps, 200_000))
    return out


def bench_templates(lines: int) -> float:
    rng = random.Random(0)
    shapes = [
        "Successfully loaded servable version {name: m version: %d}",
        "Request %d served in %d ms by worker %d",
        "Reading SavedModel from: /models/m/%d",
        "Retrying request %d after timeout %ds",
        "Resource exhausted: OOM when allocating tensor with shape[%d,%d]",
    ]
    targets = [Target(f"r{i}") for i in range(50)]
    records = [
        LogRecord(targets[i % 50], T0 + i * 0.01, rng.choice(shapes).replace("%d", str(rng.randint(1, 99999))))
        for i in range(lines)
    ]
    d = build_detector(_rule("templates", None))

    def run() -> int:
        for r in records:
            d.on_log(r)
        return len(records)

    points, elapsed = timed(run)
    return _rate(points, elapsed)


# ---------------------------------------------------------------------------- vectorized path


def bench_vectorized(n: int, steps: int) -> dict[str, float]:
    out: dict[str, float] = {}
    mem = np.ascontiguousarray(memory(n, steps).T)
    rp = RunwayParams.model_validate({"limit": "memory_limit_bytes", "within": "2m"})
    runway = RunwayBatch(
        n,
        bucket=rp.bucket,
        window=rp.window,
        min_buckets=rp.min_buckets,
        reset_drop=rp.reset_drop,
        min_confidence=rp.min_confidence,
        within=rp.within,
    )
    thresholds = np.full(n, 2048 * MiB)

    def run_runway() -> int:
        for k in range(steps):
            runway.step(T0 + k * STEP_S, mem[k], thresholds)
        return n * steps

    out["forecast"] = _rate(*timed(run_runway))
    err = np.ascontiguousarray(errors(n, steps).T)
    cp = ChangeParams.model_validate({"min_shift": 0.01})
    cusum = CusumBatch(n, warmup=cp.warmup, k=cp.k, h=cp.h, min_shift=cp.min_shift, adapt=cp.adapt, up=True, down=False)

    def run_cusum() -> int:
        for k in range(steps):
            cusum.step(err[k])
        return n * steps

    out["change"] = _rate(*timed(run_cusum))
    pp = PeerParams()
    peer = PeerBatch(k=pp.k, rel_floor=pp.rel_floor, min_deviation=pp.min_deviation, min_peers=pp.min_peers, both=False)
    groups = err.reshape(steps, n // REPLICAS, REPLICAS)

    def run_peer() -> int:
        for k in range(steps):
            peer.step(groups[k])
        return n * steps

    out["peer"] = _rate(*timed(run_peer))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--series", type=int, default=10_000, help="series in the vectorized fleet")
    parser.add_argument("--steps", type=int, default=720, help="scrapes (5 s apart) in the vectorized run")
    parser.add_argument("--per-signal-series", type=int, default=200)
    parser.add_argument("--per-signal-steps", type=int, default=360)
    parser.add_argument("--quick", action="store_true", help="a small run (CI smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.series, args.steps, args.per_signal_series, args.per_signal_steps = 1000, 120, 50, 120
    n = args.series - args.series % REPLICAS
    ps = args.per_signal_series - args.per_signal_series % REPLICAS
    print(f"cpu: one core of {os.cpu_count()}; numpy {np.__version__}")
    print(f"per-signal: {ps} series x {args.per_signal_steps} scrapes; vectorized: {n} series x {args.steps} scrapes")
    per = bench_per_signal(ps, args.per_signal_steps)
    vec = bench_vectorized(n, args.steps)
    print(f"{'detector':<28}{'per-signal pts/s':>18}{'vectorized pts/s':>18}")
    for name in sorted(set(per) | set(vec)):
        p = f"{per[name]:,.0f}" if name in per else "-"
        v = f"{vec[name]:,.0f}" if name in vec else "-"
        print(f"{name:<28}{p:>18}{v:>18}")
    worst = min(vec.values())
    verdict = "meets" if worst >= 1_000_000 else "MISSES"
    print(f"vectorized minimum {worst:,.0f} points/s/core: {verdict} the 1,000,000 goal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
