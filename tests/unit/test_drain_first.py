"""Drain before you know why (issue #17): a finding whose ETA is shorter than a restart takes is
drained at once; when its restart is refused (backoff, budget, breaker) the replica is drained and
held with an alert instead of staying in rotation; the capacity rails still decide the drain."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from watcher.model import Finding, Predicts, Target
from watcher.playbook.traffic import Hold
from watcher.policy import GuardConfig, Policy, ReplicaView
from watcher.rulepack.compile import load_packs
from watcher.rulepack.schema import AnyRule, Defaults

PACK = """
pack: p
defaults: {cooldown: 1m, max_restarts: {count: 3, per: 1h}, max_unavailable: 1, min_healthy: 1}
rules:
  - id: leak
    match: {log: 'leak'}
    predicts: oom
    then: [drain, restart, verify]
  - id: bare
    match: {log: 'bare'}
    predicts: crash
    then: [restart, verify]
"""

A = Target("tfs-0", service="m")
FLEET = {f"local/tfs-{i}": ReplicaView(f"local/tfs-{i}", "m", True) for i in range(3)}


def rules(tmp_path: Path) -> tuple[dict[str, AnyRule], Defaults]:
    (tmp_path / "p.yaml").write_text(PACK)
    [pack] = load_packs([tmp_path / "p.yaml"])
    return {r.id: r for r in pack.rules}, pack.defaults


def leak(ts: float, eta_s: float | None, rule: str = "leak") -> Finding:
    return Finding(target=A, rule_id=rule, predicts=Predicts.OOM, ts=ts, eta_s=eta_s)


def backing_off(policy: Policy, now: float) -> None:
    """One restart 5 s ago: the next is refused for 30 s (the backoff)."""
    policy.record_restart(A.key, now - 5.0, 3600.0)


def test_an_urgent_finding_whose_restart_is_backing_off_is_drained_and_held(tmp_path: Path) -> None:
    by_id, defaults = rules(tmp_path)
    policy = Policy(None, GuardConfig(restart_takes_s=10.0))
    backing_off(policy, 1000.0)
    decision = policy.decide(leak(1000.0, eta_s=4.0), by_id["leak"], defaults, FLEET, 1000.0)
    assert decision.plan is not None, decision.reason
    assert decision.plan.names == ["drain", "hold"]
    assert "backing off" in decision.reason and "drained now" in decision.reason
    hold = decision.plan[1]
    assert isinstance(hold, Hold) and "backing off" in hold.why  # the alert says why it is held


def test_a_finding_with_time_for_a_restart_is_still_refused_during_the_backoff(tmp_path: Path) -> None:
    by_id, defaults = rules(tmp_path)
    policy = Policy(None, GuardConfig(restart_takes_s=10.0))
    backing_off(policy, 1000.0)
    for eta in (None, 60.0):
        decision = policy.decide(leak(1000.0, eta_s=eta), by_id["leak"], defaults, FLEET, 1000.0)
        assert decision.plan is None and "backing off" in decision.reason


def test_the_measured_restart_duration_decides_what_is_urgent(tmp_path: Path) -> None:
    """A replica whose restarts take 40 s cannot wait for one with 20 s left; one that restarts in 5 s can."""
    by_id, defaults = rules(tmp_path)
    policy = Policy(None, GuardConfig(restart_takes_s=10.0))
    backing_off(policy, 1000.0)
    slow = policy.decide(leak(1000.0, 20.0), by_id["leak"], defaults, FLEET, 1000.0, restart_takes_s=40.0)
    assert slow.plan is not None and slow.plan.names == ["drain", "hold"]
    quick = policy.decide(leak(1000.0, 20.0), by_id["leak"], defaults, FLEET, 1000.0, restart_takes_s=5.0)
    assert quick.plan is None and "backing off" in quick.reason


def test_an_urgent_finding_with_an_open_breaker_is_drained_and_held(tmp_path: Path) -> None:
    by_id, defaults = rules(tmp_path)
    policy = Policy(None)
    for t in (100.0, 200.0, 300.0):
        policy.record_restart(A.key, t, 3600.0)
    tripped = policy.decide(leak(400.0, None), by_id["leak"], defaults, FLEET, 400.0)
    assert tripped.plan is None and "circuit breaker tripped" in tripped.reason
    urgent = policy.decide(leak(500.0, 3.0), by_id["leak"], defaults, FLEET, 500.0)
    assert urgent.plan is not None and urgent.plan.names == ["drain", "hold"]
    assert "circuit breaker open" in urgent.reason
    assert A.key in policy.breakers  # the breaker stays open: nothing restarts


def test_the_capacity_rails_still_decide_an_urgent_drain(tmp_path: Path) -> None:
    by_id, defaults = rules(tmp_path)
    policy = Policy(None)
    backing_off(policy, 1000.0)
    fleet = dict(FLEET)
    fleet["local/tfs-1"] = replace(fleet["local/tfs-1"], serving=False)  # one already out: max_unavailable 1
    decision = policy.decide(leak(1000.0, eta_s=2.0), by_id["leak"], defaults, fleet, 1000.0)
    assert decision.plan is None and "unavailable" in decision.reason


def test_an_urgent_plan_drains_first_even_when_its_rule_does_not(tmp_path: Path) -> None:
    by_id, defaults = rules(tmp_path)
    policy = Policy(None)
    urgent = policy.decide(leak(1000.0, 2.0, rule="bare"), by_id["bare"], defaults, FLEET, 1000.0)
    assert urgent.plan is not None and urgent.plan.names[0] == "drain"
    calm = policy.decide(leak(1000.0, 60.0, rule="bare"), by_id["bare"], defaults, FLEET, 1000.0)
    assert calm.plan is not None and calm.plan.names[0] == "restart"  # as the rule says


def test_the_journal_times_a_replicas_latest_restart(tmp_path: Path) -> None:
    """Restart start to serving again, the replica's latest; other replicas and dry runs do not count."""
    from watcher.journal import Journal, StepStatus
    from watcher.playbook.checks import WaitAvailable
    from watcher.playbook.container import Restart
    from watcher.playbook.plan import Plan
    from watcher.store import Store

    journal = Journal(Store(tmp_path / "j.db"))
    assert journal.restart_duration(A.key) is None

    def restarted(target: Target, at: float, took: float, dry_run: bool = False) -> None:
        plan = Plan([Restart(), WaitAvailable()])
        incident = journal.open_incident(
            leak(at, None) if target == A else replace(leak(at, None), target=target), plan, at, dry_run=dry_run
        )
        restart = journal.intent(incident, 0, plan[0], at)
        journal.outcome(restart, StepStatus.DONE, at + 1.0)
        wait = journal.intent(incident, 1, plan[1], at + 1.0)
        journal.outcome(wait, StepStatus.DONE, at + took)

    restarted(A, 100.0, took=12.0)
    restarted(A, 200.0, took=25.0)
    restarted(Target("tfs-1", service="m"), 300.0, took=3.0)
    restarted(A, 400.0, took=2.0, dry_run=True)
    assert journal.restart_duration(A.key) == 25.0
