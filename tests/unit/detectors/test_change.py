"""Change detection: a step in a replica's error ratio is caught fast; noise never fires."""

from __future__ import annotations

import numpy as np
from conftest import detector_rule

from watcher.detectors.change import ChangeDetector
from watcher.model import Lifecycle, LifecycleKind, Sample, Target

T0 = 1_714_557_600.0
TGT = Target("tfs-1", service="m")


def _detector(**params: object) -> ChangeDetector:
    return ChangeDetector(detector_rule("change", "error_ratio", predicts="http_5xx", **params))


def _first_active(d: ChangeDetector, values: np.ndarray, step: float = 15.0) -> int | None:
    for i, v in enumerate(values):
        obs = d.on_sample(Sample("error_ratio", T0 + i * step, float(v), target=TGT))
        if obs and obs[0].active:
            return i
    return None


def test_step_in_error_ratio_detected_within_bounded_delay() -> None:
    rng = np.random.default_rng(5)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        before = np.clip(0.01 + rng.normal(0, 0.003, 500), 0, 1)
        after = np.clip(0.03 + rng.normal(0, 0.003, 100), 0, 1)  # +0.02: ~7 sd
        d = _detector(min_shift=0.005)
        at = _first_active(d, np.concatenate([before, after]))
        assert at is not None and 500 <= at <= 500 + 6, at  # within 6 scrapes (90 s at 15 s)


def test_shift_below_min_shift_never_fires() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([0.01 + rng.normal(0, 0.0005, 300), 0.013 + rng.normal(0, 0.0005, 3000)])
    assert _first_active(_detector(min_shift=0.005), values) is None


def test_flat_noisy_series_no_finding_over_1e5_points() -> None:
    rng = np.random.default_rng(2)
    values = 0.01 + rng.normal(0, 0.003, 100_000)
    assert _first_active(_detector(), values) is None


def test_heavy_tailed_spikes_do_not_fire() -> None:
    """Isolated spikes (a burst of 5xx in one scrape) are not a sustained shift."""
    rng = np.random.default_rng(3)
    values = 0.01 + rng.normal(0, 0.003, 20_000)
    values[rng.choice(np.arange(100, 20_000), 40, replace=False)] += 0.5
    assert _first_active(_detector(), values) is None


def test_latency_creep_detected_and_restart_resets_baseline() -> None:
    rng = np.random.default_rng(4)
    d = ChangeDetector(detector_rule("change", "latency_p99", predicts="latency", min_shift=0.01))
    fired_at = None
    for i in range(2000):
        v = 0.1 + rng.normal(0, 0.005) + (0.0002 * (i - 300) if i > 300 else 0.0)  # creep after 300
        obs = d.on_sample(Sample("latency_p99", T0 + i * 15.0, v, target=TGT))
        if obs and obs[0].active:
            fired_at = i
            break
    assert fired_at is not None and fired_at < 300 + 200
    out = d.on_lifecycle(Lifecycle(TGT, T0 + 1e5, LifecycleKind.RESTART))
    assert out and not out[0].active


def test_direction_down_and_both() -> None:
    rng = np.random.default_rng(6)
    values = np.concatenate([100 + rng.normal(0, 2, 200), 80 + rng.normal(0, 2, 50)])
    assert _first_active(_detector(direction="up"), values) is None
    assert _first_active(_detector(direction="down"), values) is not None
    assert _first_active(_detector(direction="both"), values) is not None
