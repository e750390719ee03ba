"""The learned failure predictor: sensible from a cold start, better after observed failures."""

from __future__ import annotations

import numpy as np
from conftest import detector_rule

from watcher.detectors.predictor import FailurePredictor
from watcher.model import Lifecycle, LifecycleKind, Sample, Target

T0 = 1_714_557_600.0
MiB = 2.0**20
GiB = 2.0**30


def _predictor(**params: object) -> FailurePredictor:
    return FailurePredictor(detector_rule("predictor", None, predicts="crash", error_series="error_ratio", **params))


def test_cold_start_runway_under_120s_alone_gives_p_over_half() -> None:
    d = _predictor()
    healthy = d.features("x", 0.0)
    assert d.probability(healthy) < 0.05
    assert d.probability({**healthy, "runway": float(np.exp(-119 / 120))}) > 0.5
    assert d.probability({**healthy, "runway": float(np.exp(-600 / 120))}) < 0.1


def test_cold_start_on_a_leak_fires_with_an_eta() -> None:
    d = _predictor()
    tgt = Target("tfs-1", service="m")
    rng = np.random.default_rng(0)
    fired = []
    for i in range(400):
        t = T0 + i * 5.0
        d.on_sample(Sample("memory_limit_bytes", t, 2 * GiB, target=tgt))
        d.on_sample(Sample("memory_working_set_bytes", t, 1 * GiB + 2 * MiB * i * 5 + rng.normal(0, MiB), target=tgt))
        fired.extend(o for o in d.on_tick(t) if o.active)
    assert fired
    assert fired[0].eta_s is not None and fired[0].eta_s <= 300
    assert 0.5 <= fired[0].score <= 1.0


def _episode(d: FailurePredictor, tgt: Target, start: float, *, errors_high: bool, fail: bool) -> float:
    """20 min: the error ratio flat, then (errors_high) a shift for the last 4 min, then a crash."""
    rng = np.random.default_rng(int(start) % 1000)
    t = start
    for i in range(80):
        t = start + i * 15.0
        shifted = errors_high and i >= 64
        value = (0.05 if shifted else 0.01) + rng.normal(0, 0.002)
        d.on_sample(Sample("error_ratio", t, value, target=tgt))
        d.on_tick(t)
    if fail:
        d.on_lifecycle(Lifecycle(tgt, t + 1, LifecycleKind.DIE, exit_code=1))
    d.on_lifecycle(Lifecycle(tgt, t + 2, LifecycleKind.START))
    return t + 15.0


def test_learns_from_observed_failures() -> None:
    d = _predictor(priors={"errors": 1.0})  # a weak prior: errors alone do not convince it
    tgt = Target("tfs-1", service="m")
    errors_high = {"runway": 0.0, "mem_high": 0.0, "errors": 1.0, "latency": 0.0, "restarts": 0.0}
    healthy = {**errors_high, "errors": 0.0}
    assert d.probability(errors_high) < 0.5
    before_bad, before_ok = d.probability(errors_high), d.probability(healthy)
    t = T0
    for _ in range(12):  # error shifts are followed by crashes; healthy stretches are not
        t = _episode(d, tgt, t, errors_high=True, fail=True)
        t = _episode(d, tgt, t, errors_high=False, fail=False)
    assert d.learned["positive"] > 0 and d.learned["negative"] > 0
    after_bad, after_ok = d.probability(errors_high), d.probability(healthy)
    assert after_bad > 0.5 > before_bad, (before_bad, after_bad)
    assert after_ok < 0.2 and after_bad - after_ok > before_bad - before_ok


def test_our_own_sigterm_is_not_a_failure() -> None:
    d = _predictor()
    tgt = Target("tfs-1")
    d.on_sample(Sample("error_ratio", T0, 0.01, target=tgt))
    d.on_tick(T0)
    d.on_lifecycle(Lifecycle(tgt, T0 + 1, LifecycleKind.DIE, exit_code=143))
    assert d.learned["positive"] == 0
    d.on_tick(T0 + 20)
    d.on_lifecycle(Lifecycle(tgt, T0 + 21, LifecycleKind.OOM))
    assert d.learned["positive"] == 2  # both snapshots of the last 300 s
