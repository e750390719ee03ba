"""The executor's plan for a rule that only moves traffic: the weight stays until the finding resolves.

The integration tests (tests/integration/test_remediation.py) run whole incidents on real Nginx and
Docker; these pin the timing rules with in-memory stand-ins for the load balancer and Docker.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from watcher.actions.base import Alert, ChangeRefused, Replica
from watcher.journal import IncidentState, Journal
from watcher.model import SERIES_ONLY_ENGINE, Finding, Predicts, Target
from watcher.playbook.executor import VERSION_BEFORE_WAIT_S, Executor
from watcher.policy import GuardConfig, Policy, ReplicaView
from watcher.rulepack.compile import load_packs
from watcher.store import Store

PACK = """
pack: p
defaults: {cooldown: 10m, max_restarts: {count: 3, per: 1h}, max_unavailable: 1, min_healthy: 1}
rules:
  - id: slow
    match: {log: 'upstream timed out'}
    predicts: latency
    then: [{weight: 0}]
"""
TARGETS = [Target(f"tfs-{i}", service="m") for i in range(3)]


class FakeFleet:
    def __init__(self, shifter: FakeShifter) -> None:
        self.shifter = shifter

    def replica(self, key: str) -> Replica | None:
        for t in TARGETS:
            if t.key == key:
                return Replica(t, f"127.0.0.1:85{t.container[-1]}0", "http://127.0.0.1", "m")
        return None

    def views(self, refresh: bool = True) -> dict[str, ReplicaView]:
        return {t.key: ReplicaView(t.key, "m", self.shifter.weights.get(t.key, 1) > 0) for t in TARGETS}


class FakeShifter:
    confirms_idle = True

    def __init__(self) -> None:
        self.weights: dict[str, int] = {}
        self.history: list[tuple[str, int]] = []

    def set_weight(self, replica: Replica, weight: int) -> None:
        self.weights[replica.target.key] = weight
        self.history.append((replica.target.key, weight))

    def get_weight(self, replica: Replica) -> int:
        return self.weights.get(replica.target.key, 2)

    def wait_idle(self, replica: Replica, timeout_s: float) -> bool:
        return True

    def original_weight(self, replica: Replica) -> int:
        return 2


class NoDocker:
    def restart(self, target: Target, stop_timeout_s: float) -> dict[str, Any]:
        raise AssertionError("a weight-only plan restarts nothing")

    def recreate(self, target: Target, stop_timeout_s: float = 10.0) -> dict[str, Any]:
        raise AssertionError("a weight-only plan recreates nothing")

    def state(self, target: Target) -> dict[str, Any]:
        return {"started_at": ""}


class FakeVerifier:
    def served_version(self, replica: Replica) -> str | None:
        return "2"


class Alerts:
    def __init__(self) -> None:
        self.fired: list[Alert] = []

    def fire(self, alert: Alert) -> None:
        self.fired.append(alert)

    def resolve(self, alert: Alert) -> None:
        return None


def make(
    tmp_path: Path, max_hold_s: float = 30.0, dry_run: bool = False
) -> tuple[Executor, FakeShifter, Alerts, Journal]:
    (tmp_path / "p.yaml").write_text(PACK)
    [pack] = load_packs([tmp_path / "p.yaml"])
    store = Store(tmp_path / "w.db")
    shifter = FakeShifter()
    alerts = Alerts()
    journal = Journal(store)
    executor = Executor(
        Policy(store, GuardConfig(max_hold_s=max_hold_s, dry_run=dry_run)),
        journal,
        FakeFleet(shifter),  # type: ignore[arg-type]
        shifter,
        NoDocker(),
        FakeVerifier(),  # type: ignore[arg-type]
        alerts,
        {r.id: (r, pack.defaults) for r in pack.rules},
    )
    return executor, shifter, alerts, journal


def slow(target: Target, resolved: bool = False) -> Finding:
    return Finding(target=target, rule_id="slow", predicts=Predicts.LATENCY, ts=time.time(), resolved=resolved)


def wait_until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_weight_stays_zero_until_the_finding_resolves_then_comes_back(tmp_path: Path) -> None:
    executor, shifter, _alerts, journal = make(tmp_path)
    incident = executor.on_finding(slow(TARGETS[1]))
    assert incident is not None
    wait_until(lambda: shifter.weights.get(TARGETS[1].key) == 0)
    time.sleep(0.5)
    assert shifter.weights[TARGETS[1].key] == 0, "restored while the finding still fires"
    executor.on_finding(slow(TARGETS[1], resolved=True))
    executor.wait(5)
    assert shifter.history == [(TARGETS[1].key, 0), (TARGETS[1].key, 2)]
    found = journal.incident(incident)
    assert found is not None and found.state is IncidentState.RESOLVED
    assert any(s.detail == "finding resolved" for s in found.steps)


def test_a_finding_that_never_resolves_is_restored_after_the_bound(tmp_path: Path) -> None:
    executor, shifter, _alerts, journal = make(tmp_path, max_hold_s=0.5)
    incident = executor.on_finding(slow(TARGETS[1]))
    executor.wait(5)
    assert shifter.weights[TARGETS[1].key] == 2
    found = journal.incident(incident or -1)
    assert found is not None and any("still firing" in s.detail for s in found.steps)


def test_recurrence_within_the_cooldown_holds_the_replica_drained(tmp_path: Path) -> None:
    executor, shifter, alerts, journal = make(tmp_path)
    first = executor.on_finding(slow(TARGETS[1]))
    wait_until(lambda: shifter.weights.get(TARGETS[1].key) == 0)
    executor.on_finding(slow(TARGETS[1], resolved=True))
    executor.wait(5)
    assert shifter.weights[TARGETS[1].key] == 2
    second = executor.on_finding(slow(TARGETS[1]))  # it came back a moment later: the cooldown is 10 m
    executor.wait(5)
    assert second is not None and second != first
    held = journal.incident(second)
    assert held is not None and held.state is IncidentState.HELD
    assert shifter.weights[TARGETS[1].key] == 0
    assert any(a.labels.get("incident") == str(second) for a in alerts.fired)
    # held drained: a third finding starts nothing until an operator restores the weight
    assert executor.on_finding(slow(TARGETS[1])) is None


def test_recurrence_never_drains_below_capacity(tmp_path: Path) -> None:
    executor, shifter, _alerts, _journal = make(tmp_path)
    shifter.weights[TARGETS[0].key] = 0  # one replica is already out of rotation
    executor.on_finding(slow(TARGETS[1]))
    executor.on_finding(slow(TARGETS[1], resolved=True))
    executor.wait(5)
    # max_unavailable 1: the first finding was refused for capacity; so is the recurrence
    assert executor.on_finding(slow(TARGETS[1])) is None
    assert shifter.weights.get(TARGETS[1].key, 2) == 2
    assert all("unavailable" in why for _t, _r, why in executor.refusals)


def test_resolution_reaches_a_waiting_playbook_across_threads(tmp_path: Path) -> None:
    executor, shifter, _alerts, _journal = make(tmp_path)
    executor.on_finding(slow(TARGETS[2]))
    wait_until(lambda: shifter.weights.get(TARGETS[2].key) == 0)
    threading.Thread(target=executor.on_finding, args=(slow(TARGETS[2], resolved=True),)).start()
    executor.wait(5)
    assert shifter.weights[TARGETS[2].key] == 2


def test_stopping_leaves_a_waiting_incident_open_and_the_next_watcher_finishes_it(tmp_path: Path) -> None:
    executor, shifter, _alerts, journal = make(tmp_path)
    incident = executor.on_finding(slow(TARGETS[1]))
    assert incident is not None
    wait_until(lambda: shifter.weights.get(TARGETS[1].key) == 0)
    executor.shutdown()  # returns at once: the wait is interrupted, not run to its bound
    still = journal.incident(incident)
    assert still is not None and still.state is IncidentState.RUNNING
    assert shifter.weights[TARGETS[1].key] == 0  # traffic stays away while nobody watches

    successor, _shifter, _a, journal2 = make(tmp_path)
    successor.shifter = shifter
    successor.fleet = FakeFleet(shifter)  # type: ignore[assignment]
    assert successor.recover() == [incident]
    time.sleep(0.3)
    successor.on_finding(slow(TARGETS[1], resolved=True))
    successor.wait(5)
    assert shifter.weights[TARGETS[1].key] == 2
    done = journal2.incident(incident)
    assert done is not None and done.state is IncidentState.RESOLVED


class RefusingShifter(FakeShifter):
    """A load balancer whose config someone broke: every change is refused, its live state stays."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = True

    def set_weight(self, replica: Replica, weight: int) -> None:
        if self.refuse:
            raise ChangeRefused('nginx refused the reload: [emerg] unknown directive "bogus"', '[emerg] "bogus"')
        super().set_weight(replica, weight)


def test_a_refused_change_holds_the_incident_alerts_why_and_the_next_finding_acts(tmp_path: Path) -> None:
    executor, _, alerts, journal = make(tmp_path)
    shifter = RefusingShifter()
    executor.shifter = shifter
    first = executor.on_finding(slow(TARGETS[1]))
    assert first is not None
    executor.wait(5)
    incident = journal.incident(first)
    assert incident is not None and incident.state is IncidentState.HELD
    assert "refused" in incident.note and "live weight 2" in incident.note
    assert shifter.history == []  # the refused change is not retried, nothing "restored"
    [alert] = alerts.fired
    assert alert.labels["severity"] == "critical"
    assert '[emerg] unknown directive "bogus"' in alert.annotations["summary"]

    shifter.refuse = False  # the config is fixed
    second = executor.on_finding(slow(TARGETS[1]))
    assert second is not None, executor.refusals
    again = journal.incident(second)
    assert again is not None and [s.name for s in again.plan] == [s.name for s in incident.plan]  # not a cooldown hold
    executor.on_finding(slow(TARGETS[1], resolved=True))
    executor.wait(5)
    again = journal.incident(second)
    assert again is not None and again.state is IncidentState.RESOLVED
    assert shifter.history == [(TARGETS[1].key, 0), (TARGETS[1].key, 2)]


def test_a_dry_run_alerts_what_it_found_and_what_it_would_do_and_touches_nothing(tmp_path: Path) -> None:
    executor, shifter, alerts, journal = make(tmp_path, dry_run=True)
    incident_id = executor.on_finding(slow(TARGETS[0]))
    [incident] = journal.incidents()
    assert incident.id == incident_id and incident.state is IncidentState.DRY_RUN
    [alert] = alerts.fired
    assert alert.labels["target"] == TARGETS[0].key and alert.labels["rule"] == "slow"
    summary = alert.annotations["summary"]
    assert (
        summary == "tfs-0: latency detected; dry run: planned, nothing touched (would: weight, await_resolved, restore)"
    )
    assert alert.ends_at is not None  # a dry run is over at once: its alert ends by itself
    assert shifter.history == []


def test_a_replica_known_only_by_its_series_is_alerted_never_acted_on(tmp_path: Path) -> None:
    """Observe-and-alert (no Docker engine): a pod's series raise a finding; the plan is journalled
    as a dry run and alerted even with actions enabled. An unknown Docker container is still refused."""
    executor, shifter, alerts, journal = make(tmp_path)
    pod = Target("tfs-0", engine=SERIES_ONLY_ENGINE)
    executor.on_finding(slow(pod))
    [incident] = journal.incidents()
    assert incident.target == "prometheus/tfs-0" and incident.state is IncidentState.DRY_RUN
    [alert] = alerts.fired
    assert "observe-and-alert" in alert.annotations["summary"] and alert.labels["replica"] == "tfs-0"
    assert executor.on_finding(slow(Target("gone", service="m"))) is None
    assert [r[2] for r in executor.refusals] == ["replica has no load-balancer address/model label"]
    assert shifter.history == [] and len(journal.incidents()) == 1


class HungVerifier(FakeVerifier):
    """A replica that does not answer its status call (hung): the version query blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def served_version(self, replica: Replica) -> str | None:
        self.release.wait(10)
        return "2"


def test_a_hung_replica_is_drained_without_waiting_for_its_version_query(tmp_path: Path) -> None:
    executor, shifter, _alerts, journal = make(tmp_path)
    hung = HungVerifier()
    executor.verifier = hung  # type: ignore[assignment]
    try:
        executor.on_finding(slow(TARGETS[0]))  # returns while the version query is still blocked
        [incident] = journal.incidents()
        assert incident.version_before is None  # not known in time: verify expects the pinned/repository version
        wait_until(lambda: shifter.history[:1] == [(TARGETS[0].key, 0)])
        assert not hung.release.is_set()  # drained while the query still hangs
        time.sleep(VERSION_BEFORE_WAIT_S + 0.05)
        hung.release.set()  # it answers, too late to be believed (a quarter of a second after the opening)
        time.sleep(0.1)
        assert journal.incidents()[0].version_before is None
    finally:
        hung.release.set()


def test_the_version_served_before_is_learnt_off_the_decision_path_and_recorded_before_the_next_step(
    tmp_path: Path,
) -> None:
    """A serving replica answers its version query in moments: the traffic moves without waiting
    for it, and the journal has it before the plan goes past the traffic step (verify reads it there)."""
    executor, shifter, _alerts, journal = make(tmp_path)
    executor.on_finding(slow(TARGETS[0]))  # plan: weight, await_resolved, restore
    wait_until(lambda: journal.incidents()[0].version_before == "2")
    assert shifter.history[:1] == [(TARGETS[0].key, 0)]
