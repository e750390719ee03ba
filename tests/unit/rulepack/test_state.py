from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from watcher.rulepack import RuleState, RuleStateTable, Transition

R, T = "oom-precursor", "local/tfs-1"
P, F, N, X = RuleState.PENDING, RuleState.FIRING, RuleState.INACTIVE, RuleState.RESOLVED


def _step(table: RuleStateTable, active: bool, now: float, for_s: float = 30, keep: float = 0) -> Transition | None:
    return table.update(R, T, active, now, for_s, keep)


def test_inactive_stays_quiet() -> None:
    table = RuleStateTable()
    assert _step(table, False, 0) is None
    assert len(table) == 0 and table.state(R, T) is N


def test_pending_then_firing_after_for() -> None:
    table = RuleStateTable()
    assert _step(table, True, 100) == Transition(R, T, N, P, 100, 100)
    assert _step(table, True, 110) is None
    assert _step(table, True, 129.9) is None
    assert _step(table, True, 130) == Transition(R, T, P, F, 130, 100)
    assert _step(table, True, 140) is None
    (entry,) = table.firing()
    assert (entry.active_at, entry.fired_at, entry.since) == (100, 130, 130)


def test_for_zero_fires_at_once() -> None:
    table = RuleStateTable()
    assert _step(table, True, 5, for_s=0) == Transition(R, T, N, F, 5, 5)


def test_blip_while_pending_goes_back_to_inactive() -> None:
    table = RuleStateTable()
    _step(table, True, 0)
    assert _step(table, False, 10) == Transition(R, T, P, N, 10, None)
    assert _step(table, True, 20) == Transition(R, T, N, P, 20, 20)
    assert _step(table, True, 45) is None  # the timer restarted at 20
    assert _step(table, True, 50) is not None


def test_keep_firing_for_holds_through_flapping_then_resolves() -> None:
    table = RuleStateTable()
    _step(table, True, 0, keep=60)
    _step(table, True, 30, keep=60)
    assert table.state(R, T) is F
    assert _step(table, False, 40, keep=60) is None  # cleared at 40, held
    assert _step(table, True, 50, keep=60) is None  # back: the hold resets
    assert _step(table, False, 60, keep=60) is None  # cleared again at 60
    assert _step(table, False, 119, keep=60) is None
    assert _step(table, False, 120, keep=60) == Transition(R, T, F, X, 120, 0)
    assert table.firing() == [] and [e.resolved_at for e in table.resolved()] == [120]


def test_without_keep_firing_for_resolves_at_once_and_can_fire_again() -> None:
    table = RuleStateTable()
    _step(table, True, 0, for_s=0)
    assert _step(table, False, 10, for_s=0) == Transition(R, T, F, X, 10, 0)
    assert _step(table, False, 20, for_s=0) is None
    assert _step(table, True, 30) == Transition(R, T, X, P, 30, 30)
    assert _step(table, True, 60) == Transition(R, T, P, F, 60, 30)


def test_resolved_entries_are_garbage_collected() -> None:
    table = RuleStateTable(resolved_retention_s=100)
    _step(table, True, 0, for_s=0)
    _step(table, False, 10, for_s=0)
    assert table.gc(50) == 0 and len(table) == 1
    assert table.gc(110) == 1 and len(table) == 0


def test_gc_runs_by_itself_during_updates() -> None:
    table = RuleStateTable(resolved_retention_s=100)
    _step(table, True, 0, for_s=0)
    _step(table, False, 10, for_s=0)
    table.update("other", T, False, 500)
    assert len(table) == 0


def test_persistence_mid_pending_keeps_active_at() -> None:
    table = RuleStateTable()
    _step(table, True, 100)
    table.update("error-ratio", T, True, 90, 0, 0)  # firing
    saved = json.loads(json.dumps(table.to_json()))
    restored = RuleStateTable.from_json(saved)
    assert restored.state(R, T) is P
    assert restored.state("error-ratio", T) is F
    assert _step(restored, True, 129) is None
    assert _step(restored, True, 130) == Transition(R, T, P, F, 130, 100)
    assert [e.rule_id for e in restored.firing()] == ["error-ratio", R]


def test_persistence_keeps_keep_firing_hold() -> None:
    table = RuleStateTable()
    _step(table, True, 0, for_s=0, keep=60)
    _step(table, False, 10, for_s=0, keep=60)
    restored = RuleStateTable.from_json(table.to_json())
    assert _step(restored, False, 69, for_s=0, keep=60) is None
    assert _step(restored, False, 70, for_s=0, keep=60) == Transition(R, T, F, X, 70, 0)


def test_from_json_rejects_garbage() -> None:
    with pytest.raises(ValidationError):
        RuleStateTable.from_json({"entries": [{"rule_id": "x"}]})
    with pytest.raises(ValueError, match="format 9"):
        RuleStateTable.from_json({"format": 9, "entries": []})


def test_forget_and_copies() -> None:
    table = RuleStateTable()
    table.update("a", "t1", True, 0, 0, 0)
    table.update("a", "t2", True, 0, 0, 0)
    table.update("b", "t1", True, 0, 0, 0)
    got = table.get("a", "t1")
    assert got is not None
    got.state = RuleState.INACTIVE  # a copy: the table is unaffected
    assert table.state("a", "t1") is F
    assert table.forget(target_key="t1") == 2
    assert table.forget(rule_id="a") == 1
    assert len(table) == 0


def test_targets_are_independent() -> None:
    table = RuleStateTable()
    table.update(R, "t1", True, 0, 10, 0)
    table.update(R, "t2", True, 5, 10, 0)
    assert table.update(R, "t1", True, 10, 10, 0) is not None
    assert table.update(R, "t2", True, 10, 10, 0) is None
    assert [e.target_key for e in table.firing()] == ["t1"]
    assert [e.target_key for e in table.pending()] == ["t2"]
