"""The ``anomaly`` detector: calm on noise, one early alarm on a shift, bounded, restartable."""

from __future__ import annotations

import json
import math
import random

from watcher.detectors.anomaly import AnomalyDetector, AnomalyParams, AnomalyScorer
from watcher.detectors.registry import build_detector, detector_kinds
from watcher.model import Sample, Target
from watcher.rulepack.schema import DetectorRule

# The defaults are what production runs and what NAB is scored with: the tests use nothing else.
PARAMS = AnomalyParams()


def _noise(n: int, seed: int = 1, level: float = 10.0) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.gauss(0.0, 1.0) for _ in range(n)]


def _run(values: list[float], lo: float | None = None, hi: float | None = None) -> list[float]:
    scorer = AnomalyScorer(PARAMS, lo, hi)
    return [scorer.score(60.0 * i, v) for i, v in enumerate(values)]


def test_flat_noisy_series_scores_low() -> None:
    values = _noise(3000)
    scores = _run(values, min(values), max(values))
    # i.i.d. noise has its own rare extremes and unseen contexts; a handful of alarms is the budget.
    assert sum(s >= PARAMS.threshold for s in scores) <= 3


def test_level_shift_alarms_near_onset_then_stays_quiet() -> None:
    onset = 2000
    values = _noise(onset) + [v + 8.0 for v in _noise(500, seed=2)]
    scores = _run(values)
    alarms = [i for i, s in enumerate(scores) if s >= PARAMS.threshold]
    assert any(onset <= i <= onset + 5 for i in alarms), "a shift of 8 standard deviations must alarm at once"
    assert not any(onset + 10 <= i for i in alarms), "one alarm at the onset, then suppression"
    assert sum(i < onset for i in alarms) <= 3  # the noise budget of the flat-series test


def test_spike_alarms_once() -> None:
    values = _noise(2000)
    values[1500] += 15.0
    scores = _run(values)
    alarms = [i for i, s in enumerate(scores) if s >= PARAMS.threshold]
    assert 1500 in alarms
    assert not any(i >= 1501 for i in alarms)
    assert len(alarms) <= 3


def _daily_square_wave(days: int, skipped_day: int, step: float = 900.0) -> tuple[list[float], int]:
    """15-min points, high from 08:00 to 18:00; on ``skipped_day`` the rise does not come (NAB's art_daily_nojump)."""
    per_day = int(86400 / step)
    rng = random.Random(5)
    values = []
    for i in range(per_day * days):
        hour = (i % per_day) * 24 / per_day
        high = 8 <= hour < 18 and i // per_day != skipped_day
        values.append(20.0 + (10.0 if high else 0.0) + rng.gauss(0.0, 0.5))
    return values, skipped_day * per_day + per_day // 3


def test_skipped_daily_rise_alarms_once_through_the_seasonal_channel() -> None:
    values, onset = _daily_square_wave(12, 9)
    scorer = AnomalyScorer(PARAMS, None, None)
    alarms = [i for i, v in enumerate(values) if scorer.score(900.0 * i, v) >= PARAMS.threshold]
    assert any(onset <= i <= onset + 3 for i in alarms), "a missing daily rise must alarm when it is due"
    assert not any(i > onset + 3 for i in alarms), "one alarm; the next normal day does not page"
    # Every single value is an ordinary one: without the seasonal channel nothing sees it.
    blind = AnomalyScorer(PARAMS.model_copy(update={"seasonal_periods": ()}), None, None)
    assert all(blind.score(900.0 * i, v) < PARAMS.threshold for i, v in enumerate(values) if i >= onset - 5)


def test_scores_are_always_in_unit_interval() -> None:
    rng = random.Random(3)
    values = [rng.choice([0.0, 1e9, -1e9, rng.gauss(0, 1), 5.0]) for _ in range(3000)]
    values += [float("nan"), float("inf"), 0.0]
    for lo, hi in ((None, None), (-1e9, 1e9)):
        for s in _run(values, lo, hi):
            assert 0.0 <= s <= 1.0 and math.isfinite(s)


def test_constant_series_never_alarms() -> None:
    assert max(_run([3.0] * 2000, 3.0, 3.0)) == 0.0


def test_state_round_trip_gives_identical_future_scores() -> None:
    # 15-min steps, so the daily seasonal profile (96 points) is live at the split, and it is mid-day;
    # the resonance channel's blocks are 10 points, so the split is mid-block.
    values, _ = _daily_square_wave(12, 9)
    straight = AnomalyScorer(PARAMS, None, None)
    expected = [straight.score(900.0 * i, v) for i, v in enumerate(values)]
    first = AnomalyScorer(PARAMS, None, None)
    for i, v in enumerate(values[:905]):
        first.score(900.0 * i, v)
    state = json.loads(json.dumps(first.state()))
    assert state["seasonal"][0]["p"] == 96 and state["seasonal"][1]["p"] == 672
    # the resonance memory has categories and the split falls inside one of its blocks
    assert state["resonance"]["w"] and len(state["resonance"]["block"]) == 5
    second = AnomalyScorer(PARAMS, None, None)
    second.restore(state)
    resumed = [second.score(900.0 * i, v) for i, v in enumerate(values) if i >= 905]
    assert resumed == expected[905:]


def _rule(threshold: float = 0.5) -> DetectorRule:
    return DetectorRule.model_validate(
        {
            "id": "mem-anomaly",
            "detector": {"kind": "anomaly", "series": "mem", "params": {"threshold": threshold}},
            "predicts": "oom",
        }
    )


def test_registered_in_both_registries_and_runs_per_target() -> None:
    assert "anomaly" in detector_kinds()
    detector = build_detector(_rule())
    assert isinstance(detector, AnomalyDetector)
    a, b = Target("a"), Target("b")
    values = _noise(1500)
    active_at: dict[str, list[int]] = {"a": [], "b": []}
    for i, v in enumerate(values):
        bump = 20.0 if i == 1300 else 0.0
        for target, extra in ((a, bump), (b, 0.0)):
            obs = detector.on_sample(Sample("mem", 60.0 * i, v + extra, target=target))
            assert len(obs) == 1 and 0.0 <= obs[0].score <= 1.0
            if obs[0].active:
                active_at[target.container].append(i)
    assert 1300 in active_at["a"] and 1300 not in active_at["b"]
    assert detector.on_sample(Sample("other", 0.0, 1.0, target=a)) == []


def test_detector_state_restores_per_target() -> None:
    values = _noise(1200)
    target = Target("a")
    one = build_detector(_rule())
    for i, v in enumerate(values[:1000]):
        one.on_sample(Sample("mem", float(i), v, target=target))
    two = build_detector(_rule())
    two.restore(json.loads(json.dumps(one.state())), {target.key: target})
    for i, v in enumerate(values[1000:], start=1000):
        assert one.on_sample(Sample("mem", float(i), v, target=target)) == two.on_sample(
            Sample("mem", float(i), v, target=target)
        )
