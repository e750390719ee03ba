"""Guard-rail invariants hold for any sequence of findings and replica states (property tests)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.model import Finding, Predicts, Target
from watcher.policy import GuardConfig, Policy, ReplicaView, plan_steps
from watcher.rulepack.compile import load_packs
from watcher.rulepack.schema import Defaults
from watcher.store import Store

PACK = """
pack: p
defaults: {cooldown: 1m, max_restarts: {count: 3, per: 1h}, max_unavailable: 1, min_healthy: 1}
rules:
  - id: oom
    match: {log: 'OOM'}
    predicts: oom
    then: [drain, restart, verify]
  - id: load
    match: {log: 'load failed'}
    predicts: load_failure
    then: [alert, {hold: drained}]
  - id: note
    match: {log: 'note'}
    predicts: latency
    then: [alert]
  - id: shed
    match: {log: '500'}
    predicts: http_5xx
    then: [{weight: 0}]
"""

REPLICAS = [Target(f"tfs-{i}", service="m") for i in range(3)]


def rules(tmp_path: Path) -> tuple[dict[str, object], Defaults]:
    (tmp_path / "p.yaml").write_text(PACK)
    [pack] = load_packs([tmp_path / "p.yaml"])
    return {r.id: r for r in pack.rules}, pack.defaults


def finding(target: Target, rule: str, ts: float, resolved: bool = False) -> Finding:
    predicts = {
        "oom": Predicts.OOM,
        "load": Predicts.LOAD_FAILURE,
        "note": Predicts.LATENCY,
        "shed": Predicts.HTTP_5XX,
    }[rule]
    return Finding(target=target, rule_id=rule, predicts=predicts, ts=ts, resolved=resolved)


def test_plans_follow_the_playbook(tmp_path: Path) -> None:
    by_id, _ = rules(tmp_path)
    assert [s.name for s in plan_steps(by_id["oom"], 60)] == [  # type: ignore[arg-type]
        "drain",
        "wait_idle",
        "restart",
        "wait_available",
        "verify",
        "restore",
    ]
    assert [s.name for s in plan_steps(by_id["load"], 60)] == ["alert", "hold"]  # type: ignore[arg-type]
    assert not plan_steps(by_id["note"], 60).takes_capacity  # type: ignore[arg-type]
    # moving traffic alone fixes nothing: the weight stays until the finding resolves (bounded)
    shed = plan_steps(by_id["shed"], 60, max_hold_s=300)  # type: ignore[arg-type]
    assert [s.name for s in shed] == ["weight", "await_resolved", "restore"]
    assert shed[1].to_json() == {"name": "await_resolved", "params": {"timeout_s": 300}}  # the journal's shape


def test_a_finding_back_within_the_cooldown_holds_instead_of_repeating(tmp_path: Path) -> None:
    by_id, defaults = rules(tmp_path)
    policy = Policy(None)
    fleet = {f"local/tfs-{i}": ReplicaView(f"local/tfs-{i}", "m", True) for i in range(3)}
    key = REPLICAS[0].key
    first = policy.decide(finding(REPLICAS[0], "oom", 100.0), by_id["oom"], defaults, fleet, 100.0)  # type: ignore[arg-type]
    assert first.plan is not None and any(s.name == "restart" for s in first.plan)
    policy.record_action(key, "oom", 100.0)
    again = policy.decide(finding(REPLICAS[0], "oom", 130.0), by_id["oom"], defaults, fleet, 130.0)  # type: ignore[arg-type]
    assert again.plan is not None and [s.name for s in again.plan] == ["drain", "hold"]
    assert "recurred" in again.reason
    # an alert-only rule is simply cooled down
    policy.record_action(key, "note", 100.0)
    note = policy.decide(finding(REPLICAS[0], "note", 130.0), by_id["note"], defaults, fleet, 130.0)  # type: ignore[arg-type]
    assert note.plan is None and note.reason.startswith("cooldown")
    # and the hold still respects capacity
    fleet["local/tfs-1"] = ReplicaView("local/tfs-1", "m", False)
    full = policy.decide(finding(REPLICAS[0], "oom", 131.0), by_id["oom"], defaults, fleet, 131.0)  # type: ignore[arg-type]
    assert full.plan is None and "unavailable" in full.reason


def test_never_the_last_healthy_replica(tmp_path: Path) -> None:
    by_id, defaults = rules(tmp_path)
    policy = Policy(None)
    fleet = {
        "local/tfs-0": ReplicaView("local/tfs-0", "m", serving=True),
        "local/tfs-1": ReplicaView("local/tfs-1", "m", serving=False),  # already down
        "local/tfs-2": ReplicaView("local/tfs-2", "m", serving=False),
    }
    d = policy.decide(finding(REPLICAS[0], "oom", 100.0), by_id["oom"], defaults, fleet, 100.0)  # type: ignore[arg-type]
    assert d.plan is None and "serving replica" in d.reason and d.escalate


def test_stale_and_resolved_findings_start_nothing(tmp_path: Path) -> None:
    by_id, defaults = rules(tmp_path)
    policy = Policy(None, GuardConfig(fresh_s=60))
    fleet = {f"local/tfs-{i}": ReplicaView(f"local/tfs-{i}", "m", True) for i in range(3)}
    stale = policy.decide(finding(REPLICAS[0], "oom", 0.0), by_id["oom"], defaults, fleet, 100.0)  # type: ignore[arg-type]
    assert stale.plan is None and "old" in stale.reason
    gone = policy.decide(finding(REPLICAS[0], "oom", 99.0, resolved=True), by_id["oom"], defaults, fleet, 100.0)  # type: ignore[arg-type]
    assert gone.plan is None


def test_restart_budget_backoff_then_breaker_escalates_once(tmp_path: Path) -> None:
    by_id, defaults = rules(tmp_path)
    store = Store(tmp_path / "g.db")
    policy = Policy(store, GuardConfig(backoff_base_s=100))
    fleet = {f"local/tfs-{i}": ReplicaView(f"local/tfs-{i}", "m", True) for i in range(3)}
    key = REPLICAS[0].key
    now = 1000.0
    outcomes = []
    for _ in range(30):
        now += 70  # past the 1 m cooldown each time
        d = policy.decide(finding(REPLICAS[0], "oom", now), by_id["oom"], defaults, fleet, now)  # type: ignore[arg-type]
        if d.plan is not None:
            policy.record_action(key, "oom", now)
            policy.record_restart(key, now, defaults.max_restarts.per)
            outcomes.append("restart")
        else:
            outcomes.append("escalate" if d.escalate else d.reason.split(":")[0])
    assert outcomes.count("restart") == 3
    assert outcomes.count("escalate") == 1
    assert "backing off" in outcomes and "circuit breaker open" in outcomes
    # the breaker survives a watcher restart
    reloaded = Policy(Store(tmp_path / "g.db"))
    d = reloaded.decide(finding(REPLICAS[0], "oom", now + 1), by_id["oom"], defaults, fleet, now + 1)  # type: ignore[arg-type]
    assert d.plan is None and "breaker" in d.reason


events = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2),  # replica
        st.sampled_from(["oom", "load", "note", "shed"]),  # rule
        st.floats(min_value=0, max_value=400),  # seconds since the previous event
        st.booleans(),  # does a running incident finish before this event
        st.booleans(),  # is some other replica failing on its own (down)
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(events)
def test_guard_rail_invariants(tmp_path_factory: object, seq: list[tuple[int, str, float, bool, bool]]) -> None:
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    by_id, defaults = rules(tmp)
    policy = Policy(None, GuardConfig(backoff_base_s=30))
    now = 10_000.0
    drained: set[str] = set()  # replicas our incidents took out of rotation
    down: set[str] = set()  # replicas down on their own
    restarts: dict[str, list[float]] = {}
    trips = 0
    for idx, rule_id, gap, finish, other_down in seq:
        now += gap
        if finish and drained:
            done = sorted(drained)[0]
            drained.discard(done)
            policy.busy.discard(done)
        down = {REPLICAS[(idx + 1) % 3].key} if other_down else set()
        fleet = {r.key: ReplicaView(r.key, "m", r.key not in drained and r.key not in down) for r in REPLICAS}
        target = REPLICAS[idx]
        d = policy.decide(finding(target, rule_id, now), by_id[rule_id], defaults, fleet, now)  # type: ignore[arg-type]
        if d.escalate and "breaker" in d.reason:
            trips += 1
        if d.plan is None:
            continue
        if d.plan.takes_capacity:
            serving_others = [k for k, v in fleet.items() if v.serving and k != target.key]
            unavailable = {k for k, v in fleet.items() if not v.serving} | {target.key}
            assert len(serving_others) >= defaults.min_healthy  # never the last healthy replica
            assert len(unavailable) <= defaults.max_unavailable
            drained.add(target.key)
            policy.busy.add(target.key)
        policy.record_action(target.key, rule_id, now)
        if any(s.name == "restart" for s in d.plan):
            window = [t for t in restarts.get(target.key, []) if now - t < defaults.max_restarts.per]
            assert len(window) < defaults.max_restarts.count  # the budget is never exceeded
            restarts[target.key] = [*window, now]
            policy.record_restart(target.key, now, defaults.max_restarts.per)
    assert trips <= len(REPLICAS) * (1 + len(seq) // 10)  # a breaker escalates once per trip, not per finding


def test_restarts_recorded_by_concurrent_playbook_workers_are_never_lost(tmp_path: Path) -> None:
    """Workers record restarts while the decision thread saves the state: every restart counts."""
    import sys
    import threading

    policy = Policy(Store(tmp_path / "w.db"))
    errors: list[BaseException] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to give a race its chance

    def worker() -> None:
        try:
            for i in range(150):
                policy.record_restart("local/tfs-1", 1000.0 + i, window_s=1e9)
        except BaseException as exc:
            errors.append(exc)

    def operator() -> None:
        try:
            for i in range(150):
                policy.silence({"target": f"local/x-{i}"}, until=1e12, now=1000.0)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=worker) for _ in range(4)] + [threading.Thread(target=operator)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    assert len(policy.restarts["local/tfs-1"]) == 600
    assert len(Policy(Store(tmp_path / "w.db")).restarts["local/tfs-1"]) == 600


def test_an_alert_only_rule_on_every_replica_leaves_the_fleet_rate_limit_to_drains(tmp_path: Path) -> None:
    """At 48 replicas the learned predictor (alert only) fired on all of them within half a minute;
    counted as actions, those alerts used up the fleet-wide limit and a crashing replica's drain was
    refused. Alerts change nothing in the fleet: they neither count nor wait for the limit."""
    by_id, defaults = rules(tmp_path)
    policy = Policy(None, GuardConfig(global_actions_per_minute=3))
    fleet = {f"local/r{i}": ReplicaView(f"local/r{i}", "m", serving=True) for i in range(20)}
    for i in range(15):
        d = policy.decide(finding(Target(f"r{i}", service="m"), "note", 100.0), by_id["note"], defaults, fleet, 100.0)  # type: ignore[arg-type]
        assert d.plan is not None, d.reason  # not held back by the limit either
        assert not d.plan.changes_fleet
        policy.record_action(f"local/r{i}", "note", 100.0, d.plan.changes_fleet)
    drains = []
    for i in range(15, 19):
        d = policy.decide(finding(Target(f"r{i}", service="m"), "oom", 101.0), by_id["oom"], defaults, fleet, 101.0)  # type: ignore[arg-type]
        drains.append(d.reason)
        if d.plan is not None:
            assert d.plan.changes_fleet
            policy.record_action(f"local/r{i}", "oom", 101.0, d.plan.changes_fleet)
            fleet[f"local/r{i}"] = ReplicaView(f"local/r{i}", "m", serving=False)
    # max_unavailable 1 allows the first drain only; the limit itself still counts drains
    assert drains[0] == "planned" and all("fleet rate limit" not in r for r in drains[:1])
    for i in range(19, 20):
        policy.actions = [101.0] * 3  # three fleet changes in the last minute
        d = policy.decide(finding(Target(f"r{i}", service="m"), "oom", 102.0), by_id["oom"], defaults, fleet, 102.0)  # type: ignore[arg-type]
        assert d.plan is None and "fleet rate limit" in d.reason
