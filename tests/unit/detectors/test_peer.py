"""Peer comparison: the one replica that diverges from its siblings, and only it, is flagged."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import detector_rule

from watcher.detectors.base import Observation
from watcher.detectors.peer import PeerDetector
from watcher.model import Sample, Target

T0 = 1_714_557_600.0


def _detector(**params: object) -> PeerDetector:
    return PeerDetector(detector_rule("peer", "latency_p99", predicts="latency", **params))


def _scrape(d: PeerDetector, targets: list[Target], values: list[float], t: float) -> list[Observation]:
    for target, v in zip(targets, values, strict=True):
        d.on_sample(Sample("latency_p99", T0 + t, v, target=target))
    return d.on_tick(T0 + t)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_one_diverging_replica_among_n_is_flagged_alone(n: int) -> None:
    rng = np.random.default_rng(n)
    targets = [Target(f"tfs-{i}", service="m") for i in range(n)]
    d = _detector()
    flagged: set[str] = set()
    for step in range(200):
        values = list(0.1 + rng.normal(0, 0.003, n))
        if step >= 100:
            values[1] = 0.3 + rng.normal(0, 0.003)  # replica 1 goes slow
        for o in _scrape(d, targets, values, step * 15.0):
            if o.active:
                flagged.add(o.target.container)
                assert step >= 100
    assert flagged == {"tfs-1"}


def test_all_new_replicas_are_fine_and_two_are_too_few() -> None:
    rng = np.random.default_rng(9)
    d = _detector()
    targets = [Target(f"new-{i}", service="m") for i in range(4)]
    obs = _scrape(d, targets, list(0.1 + rng.normal(0, 0.003, 4)), 0.0)  # their very first scrape
    assert obs and not any(o.active for o in obs)
    pair = [Target(f"pair-{i}", service="p") for i in range(2)]
    assert not any(o.active for o in _scrape(d, pair, [0.1, 10.0], 15.0))


def test_services_are_compared_separately_and_stale_values_leave() -> None:
    d = _detector()
    a = [Target(f"a-{i}", service="a") for i in range(3)]
    b = [Target(f"b-{i}", service="b") for i in range(3)]
    _scrape(d, a, [0.1, 0.1, 0.1], 0.0)
    obs = _scrape(d, b, [1.0, 1.0, 1.0], 0.0)  # slower model, but all alike
    assert not any(o.active for o in obs)
    obs = _scrape(d, a, [0.1, 0.1, 0.5], 15.0)
    assert [o.target.container for o in obs if o.active] == ["a-2"]
    obs = _scrape(d, a[:2], [0.1, 0.1], 500.0)  # a-2 stopped reporting
    assert any(o.target.container == "a-2" and not o.active for o in obs)
