"""The runway's decision boundary (issue #17): evidence sized to the time left.

A leak at every rate of the chaos sweep (1-32 MB/s from 60 MB under a 256 MB limit) must be found
no later than half the time it takes to reach the limit; a GC sawtooth (large allocations freed
within seconds) must never be. The shipped ``memory-runway`` params are read from the pack. (Healthy noise: the
shipped recording gives 0 findings, tests/unit/testbed_eval/test_leadtime.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from watcher.detectors.forecast import RunwayDetector
from watcher.model import Sample, Target
from watcher.rulepack.compile import load_packs
from watcher.rules import SHIPPED_RULES

T0 = 1_714_557_600.0
MB = 2.0**20
LIMIT = 256 * MB
BASE = 60 * MB
TGT = Target("tfs-1", service="m")
RATES = [1, 2, 4, 8, 16, 32]


def _shipped() -> RunwayDetector:
    [pack] = load_packs([SHIPPED_RULES / "foresight.yaml"])
    return RunwayDetector(pack.rule("memory-runway"))


def _feed(d: RunwayDetector, t: float, value: float) -> bool:
    d.on_sample(Sample("memory_limit_bytes", T0 + t, LIMIT, target=TGT))
    return any(o.active for o in d.on_sample(Sample("memory_working_set_bytes", T0 + t, value, target=TGT)))


def _first_finding(rate_mb: float, period: float, start: float, seed: int = 0) -> float | None:
    """Seconds from the leak's start to the first active observation (None: the kill came first)."""
    rng = np.random.default_rng(seed)
    d = _shipped()
    oom = start + (LIMIT - BASE) / (rate_mb * MB)
    t = 0.0
    while t < oom:
        if _feed(d, t, BASE + max(0.0, t - start) * rate_mb * MB + float(rng.normal(0, 1 * MB))):
            return t - start
        t += period
    return None


def _half_time(rate_mb: float) -> float:
    return (LIMIT - BASE) / (rate_mb * MB) / 2


@pytest.mark.parametrize("rate_mb", RATES)
@pytest.mark.parametrize("period", [1.0, 5.0])
def test_every_leak_of_the_sweep_is_found_within_half_its_time_to_the_limit(rate_mb: int, period: float) -> None:
    """At 5 s sampling, 16 and 32 MB/s reach the limit before two samples land on the rise at some
    phases; for them the bound is the earliest possible one: the first sample a whole period into it."""
    for phase in np.linspace(0.0, period, 5, endpoint=False):
        start = 60.0 + float(phase)
        got = _first_finding(rate_mb, period, start)
        if _half_time(rate_mb) >= 2 * period:
            assert got is not None and got <= _half_time(rate_mb), (phase, got, _half_time(rate_mb))
        else:
            first_full_step = (np.floor(start / period) + 2) * period - start  # a whole period after the start
            oom = (LIMIT - BASE) / (rate_mb * MB)
            if first_full_step < oom:
                assert got is not None and got <= first_full_step, (phase, got, first_full_step)


def _sawtooth(t: float, amplitude: float, growth: float, cycle: float, phase: float) -> float:
    """Allocations of ``amplitude`` made over ``growth`` seconds, held, freed at half the cycle."""
    u = (t + phase) % cycle
    return BASE + (amplitude * min(u / growth, 1.0) if u < cycle / 2 else 0.0)


def _never_fires(amplitude: float, growth: float, cycle: float, phase: float, period: float) -> None:
    rng = np.random.default_rng(5)
    d = _shipped()
    for i in range(int(600 / period)):
        t = i * period
        value = _sawtooth(t, amplitude, growth, cycle, phase) + float(rng.normal(0, 1 * MB))
        assert not _feed(d, t, value), (t, value / MB)


@pytest.mark.parametrize("period", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("growth", [2.0, 3.5, 5.0])
@pytest.mark.parametrize("cycle", [10.0, 13.7, 30.0])
def test_a_48_mb_sawtooth_never_fires_in_ten_minutes_even_from_a_cold_start(
    period: float, growth: float, cycle: float
) -> None:
    for phase in (0.0, 0.7, 2.9):
        _never_fires(48 * MB, growth, cycle, phase, period)


@pytest.mark.parametrize("share", [0.3, 0.45, 0.6])
@pytest.mark.parametrize("period", [1.0, 5.0])
@pytest.mark.parametrize("growth", [2.0, 5.0])
def test_a_sawtooth_up_to_60_percent_of_the_headroom_seen_once_never_fires(
    share: float, period: float, growth: float
) -> None:
    """The watcher meets a replica mid-cycle (its first sample is at a peak): peaks that do not rise
    cover no new ground. (Seen from the bottom of its first cycle, a climb past ~40 % of the headroom
    in a few seconds is, sample for sample, a leak that must be acted on.)"""
    cycle = 20.0
    for phase in (growth, growth + 0.5 * period):  # the first sample lands on the held peak
        _never_fires(share * (LIMIT - BASE), growth, cycle, phase, period)
