"""The fleet-wide numpy path gives exactly the per-signal detectors' results on the same input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import detector_rule

from watcher.detectors.change import ChangeDetector, ChangeParams
from watcher.detectors.forecast import RunwayDetector, RunwayParams
from watcher.detectors.peer import PeerDetector, PeerParams
from watcher.detectors.vectorized import CusumBatch, PeerBatch, RunwayBatch
from watcher.model import Sample, Target

T0 = 1_714_557_600.0
MiB = 2.0**20


def _fleet_memory(steps: int, rng: np.random.Generator) -> np.ndarray:
    """Six shapes: leaks of three speeds, flat, a restart drop mid-way, a one-off spike."""
    t = np.arange(steps) * 5.0
    saw = 40 * MiB * ((t % 45.0) / 45.0)
    rows = [
        500 * MiB + 1 * MiB * t + saw,
        500 * MiB + 3 * MiB * t + saw,
        300 * MiB + 0.3 * MiB * t + saw,
        900 * MiB + saw,
        np.where(t < 900, 400 * MiB + 1.5 * MiB * t, 300 * MiB + 1.5 * MiB * (t - 900)) + saw,
        np.where(np.arange(steps) == 150, 1900 * MiB, 800 * MiB) + saw,
    ]
    return np.array(rows) + rng.normal(0, 3 * MiB, (len(rows), steps))


@pytest.mark.parametrize(
    "extra",
    [{}, {"bucket": "10s", "min_rise_steps": 3, "reset_drop": 0.9}],
    ids=["defaults", "sustained-rise"],
)
def test_runway_per_signal_equals_vectorized(extra: dict[str, object]) -> None:
    rng = np.random.default_rng(0)
    values = _fleet_memory(600, rng)
    n, steps = values.shape
    limit = 2048 * MiB
    rule = detector_rule("forecast", "mem", limit=limit, fraction=0.95, within="2m", **extra)
    d = RunwayDetector(rule)
    p = d.params
    assert isinstance(p, RunwayParams)
    batch = RunwayBatch(
        n,
        bucket=p.bucket,
        window=p.window,
        min_buckets=p.min_buckets,
        reset_drop=p.reset_drop,
        min_confidence=p.min_confidence,
        within=p.within,
        min_rise_steps=p.min_rise_steps,
    )
    targets = [Target(f"r{i}") for i in range(n)]
    thresholds = np.full(n, 0.95 * limit)
    compared = fired = 0
    for s in range(steps):
        ts = T0 + s * 5.0
        active, eta, _ = batch.step(ts, values[:, s], thresholds)
        for i, tgt in enumerate(targets):
            obs = d.on_sample(Sample("mem", ts, float(values[i, s]), target=tgt))
            got = d.eta(tgt.key, ts)
            if got is None:
                assert math.isnan(eta[i]), (s, i)
                assert not active[i]
                continue
            assert got == eta[i] or (math.isinf(got) and math.isinf(eta[i])), (s, i, got, eta[i])
            assert bool(obs[0].active) == bool(active[i]), (s, i)
            compared += 1
            fired += int(active[i])
    assert compared > 2000 and fired > 50


def test_cusum_per_signal_equals_vectorized() -> None:
    rng = np.random.default_rng(1)
    n, steps = 8, 3000
    values = 0.01 + rng.normal(0, 0.003, (n, steps))
    values[2, 1500:] += 0.02
    values[5, 800:] -= 0.008
    values[7, 2000:] += np.linspace(0, 0.03, 1000)
    for direction in ("up", "both"):
        rule = detector_rule("change", "err", predicts="http_5xx", direction=direction)
        d = ChangeDetector(rule)
        p = d.params
        assert isinstance(p, ChangeParams)
        batch = CusumBatch(
            n,
            warmup=p.warmup,
            k=p.k,
            h=p.h,
            min_shift=p.min_shift,
            adapt=p.adapt,
            up=direction != "down",
            down=direction != "up",
        )
        targets = [Target(f"r{i}") for i in range(n)]
        fired = 0
        for s in range(steps):
            active, score = batch.step(values[:, s])
            for i, tgt in enumerate(targets):
                [obs] = d.on_sample(Sample("err", T0 + s, float(values[i, s]), target=tgt))
                assert obs.active == bool(active[i]) and obs.score == min(1.0, float(score[i])), (s, i)
                fired += int(obs.active)
            if s % 500 == 0:
                assert [d._state[t.key].mean for t in targets] == list(batch.mean)
        assert fired > 100


def test_peer_per_signal_equals_vectorized() -> None:
    rng = np.random.default_rng(2)
    services, replicas, steps = 4, 5, 300
    values = 0.1 + rng.normal(0, 0.004, (services, replicas, steps))
    values[0, 3, 100:] += 0.2
    values[2, 0, 50:] += 0.05
    values[1, 4, :] = np.nan  # service 1 has four replicas
    values[3, 2:, :] = np.nan  # service 3 only two: no verdict
    rule = detector_rule("peer", "lat", predicts="latency")
    d = PeerDetector(rule)
    p = d.params
    assert isinstance(p, PeerParams)
    batch = PeerBatch(k=p.k, rel_floor=p.rel_floor, min_deviation=p.min_deviation, min_peers=p.min_peers, both=False)
    targets = [[Target(f"s{g}-r{r}", service=f"s{g}") for r in range(replicas)] for g in range(services)]
    fired = 0
    for s in range(steps):
        ts = T0 + s * 15.0
        active, z = batch.step(values[:, :, s])
        for g in range(services):
            for r in range(replicas):
                if not math.isnan(values[g, r, s]):
                    d.on_sample(Sample("lat", ts, float(values[g, r, s]), target=targets[g][r]))
        got = {o.target.key: o for o in d.on_tick(ts)}
        for g in range(services):
            for r in range(replicas):
                obs = got.get(targets[g][r].key)
                if obs is None:
                    assert not active[g, r]
                    continue
                assert obs.active == bool(active[g, r]), (s, g, r)
                assert obs.score == min(1.0, abs(float(z[g, r])) / (2 * p.k))
                fired += int(obs.active)
    assert fired >= 200
