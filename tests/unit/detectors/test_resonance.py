"""The fuzzy-ART memory behind the resonance channel: known shapes resonate, new ones do not."""

from __future__ import annotations

import json
import math

from watcher.detectors.resonance import Resonance


def _wave(n: int, period: int = 40) -> list[float]:
    return [0.5 + 0.4 * math.sin(2 * math.pi * i / period) for i in range(n)]


def _mismatches(memory: Resonance, values: list[float]) -> list[float]:
    return [m for m in (memory.step(v) for v in values) if m is not None]


def test_reports_only_at_block_ends_once_the_window_is_full() -> None:
    memory = Resonance(window=3, downsample=4, vigilance=0.9, beta=1.0, max_categories=100)
    out = [memory.step(0.5) for _ in range(20)]
    # blocks close at points 4, 8, 12, ...; the window of three block means is full at the third
    assert [i for i, m in enumerate(out) if m is not None] == [11, 15, 19]


def test_a_repeated_shape_is_learnt_and_a_new_one_stands_out() -> None:
    memory = Resonance(window=8, downsample=2, vigilance=0.85, beta=1.0, max_categories=100)
    learnt = _mismatches(memory, _wave(2000))
    # Once learnt, a window's mismatch is at most the size of the box that holds it: 1 - vigilance.
    known = max(learnt[-200:])
    assert known <= 0.15 + 1e-9
    # a faster oscillation: no box of the slow wave is near it (the scorer pages at about 1.07 times
    # the largest earlier mismatch)
    new = _mismatches(memory, _wave(40, period=8))
    assert max(new) > 1.5 * known


def test_categories_are_bounded() -> None:
    memory = Resonance(window=4, downsample=1, vigilance=0.99, beta=1.0, max_categories=10)
    _mismatches(memory, [(i * 0.618) % 1.0 for i in range(500)])
    assert len(memory.norm) == 10


def test_state_round_trip_mid_block() -> None:
    values = _wave(1003)
    straight = Resonance(window=8, downsample=4, vigilance=0.85, beta=1.0, max_categories=100)
    expected = [straight.step(v) for v in values]
    first = Resonance(window=8, downsample=4, vigilance=0.85, beta=1.0, max_categories=100)
    for v in values[:601]:
        first.step(v)
    state = json.loads(json.dumps(first.state()))
    assert len(state["block"]) == 1
    second = Resonance(window=8, downsample=4, vigilance=0.85, beta=1.0, max_categories=100)
    second.restore(state)
    assert [second.step(v) for v in values[601:]] == expected[601:]
