"""Ticks skip work that cannot change anything (issue #18), never a finding that is due.

The engine skips a detector whose own deadline is ahead and that was not fed since its last tick,
and the rule-state update of a rule firing with its condition still holding. Each test ticks the
engine while idle first (so the skips are in place), then feeds it, and checks that the findings
are still born and resolved when a user reading the pack expects them.
"""

from __future__ import annotations

from pathlib import Path

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.model import Lifecycle, LifecycleKind, LogRecord, Sample, Target
from watcher.rulepack.compile import load_packs

PACK = """
pack: test
rules:
  - id: fatal-check
    match: {log: 'Check failed', level: [fatal]}
    predicts: crash
  - id: oom-killed
    event: {kind: die, exit_codes: [137]}
    predicts: oom
  - id: memory-high
    threshold: {series: memory_ratio, above: 0.9}
    for: 30s
    predicts: oom
"""

T0 = 1_714_557_600.0
REPLICA = Target("tfs-1", service="m")
FATAL = "2024-05-01 10:00:00.123456: F external/org_tensorflow/tensorflow/core/x.cc:1] Check failed: x"


def _engine(tmp_path: Path) -> tuple[Engine, ManualClock]:
    path = tmp_path / "test.yaml"
    path.write_text(PACK)
    clock = ManualClock(T0)
    engine = Engine(load_packs([path]), clock)
    for _ in range(3):  # idle ticks: every detector's deadline is now known (none is due)
        clock.advance(1)
        assert engine.tick() == []
    return engine, clock


def _tick_for(engine: Engine, clock: ManualClock, seconds: int) -> list[str]:
    out = []
    for _ in range(seconds):
        clock.advance(1)
        out += [f"{f.rule_id}{':resolved' if f.resolved else ''}" for f in engine.tick()]
    return out


def test_a_line_fed_after_idle_ticks_fires_and_resolves_five_minutes_later(tmp_path: Path) -> None:
    engine, clock = _engine(tmp_path)
    [fired] = engine.feed_batch([LogRecord(REPLICA, clock.now(), FATAL)])
    assert fired.rule_id == "fatal-check" and not fired.resolved
    assert _tick_for(engine, clock, 299) == []  # firing, condition holding: nothing to say
    assert _tick_for(engine, clock, 2) == ["fatal-check:resolved"]


def test_a_second_line_while_firing_moves_the_resolution_on(tmp_path: Path) -> None:
    engine, clock = _engine(tmp_path)
    [_] = engine.feed(LogRecord(REPLICA, clock.now(), FATAL))
    assert _tick_for(engine, clock, 200) == []
    assert engine.feed(LogRecord(REPLICA, clock.now(), FATAL)) == []  # already firing
    assert _tick_for(engine, clock, 299) == []  # the window now runs from the second line
    assert _tick_for(engine, clock, 2) == ["fatal-check:resolved"]


def test_an_event_fed_after_idle_ticks_resolves(tmp_path: Path) -> None:
    engine, clock = _engine(tmp_path)
    [fired] = engine.feed(Lifecycle(REPLICA, clock.now(), LifecycleKind.DIE, exit_code=137))
    assert fired.rule_id == "oom-killed"
    assert _tick_for(engine, clock, 301) == ["oom-killed:resolved"]


def test_a_threshold_fed_after_idle_ticks_goes_pending_then_fires(tmp_path: Path) -> None:
    engine, clock = _engine(tmp_path)
    assert engine.feed(Sample("memory_ratio", clock.now(), 0.95, target=REPLICA)) == []
    assert _tick_for(engine, clock, 31) == ["memory-high"]
    [resolved] = engine.feed(Sample("memory_ratio", clock.now(), 0.5, target=REPLICA))
    assert resolved.rule_id == "memory-high" and resolved.resolved


def test_a_threshold_that_fires_again_goes_through_pending_again(tmp_path: Path) -> None:
    engine, clock = _engine(tmp_path)
    assert engine.feed(Sample("memory_ratio", clock.now(), 0.95, target=REPLICA)) == []
    assert _tick_for(engine, clock, 31) == ["memory-high"]
    [_] = engine.feed(Sample("memory_ratio", clock.now(), 0.5, target=REPLICA))
    assert engine.feed(Sample("memory_ratio", clock.now(), 0.95, target=REPLICA)) == []  # pending again
    assert _tick_for(engine, clock, 29) == []
    assert _tick_for(engine, clock, 2) == ["memory-high"]  # promoted by a tick, with no new sample
