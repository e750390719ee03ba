"""A finding the guard rails refused for a while is decided again once the refusal can have lapsed.

The engine reports a finding once, when its rule starts firing: a finding refused during a replica's
restart backoff used to be dropped, and the replica stayed sick until some other rule fired. The
real policy and executor run here on a manual clock; the load balancer, Docker and the model server
are tests/unit's in-memory fakes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.unit.playbook.test_step_conformance import FakeDocker, HealthyModel
from tests.unit.test_executor import TARGETS, Alerts, FakeFleet, FakeShifter, wait_until
from watcher.clock import ManualClock
from watcher.decisions import Decisions
from watcher.journal import Journal
from watcher.model import Finding, Predicts
from watcher.playbook.executor import Executor
from watcher.policy import GuardConfig, Policy
from watcher.rulepack.compile import load_packs
from watcher.store import Store

PACK = """
pack: p
defaults: {cooldown: 10m, max_restarts: {count: 5, per: 1h}, max_unavailable: 1, min_healthy: 1}
rules:
  - id: oom
    match: {log: 'OOM'}
    predicts: oom
    then: [restart]
  - id: errors
    match: {log: '500'}
    predicts: http_5xx
    then: [restart]
  - id: runway
    match: {log: 'runway'}
    predicts: oom
    then: [restart]
"""
SICK = TARGETS[1]
BACKOFF_S = 30.0


class Bed:
    """One executor on a manual clock, with what it did to the fakes and what it said."""

    def __init__(self, tmp_path: Path, fresh_s: float = 120.0) -> None:
        (tmp_path / "p.yaml").write_text(PACK)
        [pack] = load_packs([tmp_path / "p.yaml"])
        self.clock = ManualClock(time.time())
        self.docker = FakeDocker(started_at=self.clock.now() - 3600)
        self.shifter = FakeShifter()
        self.alerts = Alerts()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.journal = Journal(Store(tmp_path / "w.db"))
        self.executor = Executor(
            Policy(None, GuardConfig(backoff_base_s=BACKOFF_S, fresh_s=fresh_s)),
            self.journal,
            FakeFleet(self.shifter),  # type: ignore[arg-type]
            self.shifter,
            self.docker,
            HealthyModel(),  # type: ignore[arg-type]
            self.alerts,
            {r.id: (r, pack.defaults) for r in pack.rules},
            clock=self.clock,
            on_event=lambda kind, data: self.events.append((kind, data)),
        )

    def finding(self, rule: str, resolved: bool = False) -> Finding:
        predicts = Predicts.HTTP_5XX if rule == "errors" else Predicts.OOM
        return Finding(target=SICK, rule_id=rule, predicts=predicts, ts=self.clock.now(), resolved=resolved)

    def begin(self) -> None:
        """t=0: a first incident restarts the replica, so its restart backoff runs from now."""
        self.start = self.clock.now()
        assert self.executor.on_finding(self.finding("oom")) is not None
        self.executor.wait(5)
        assert self.docker.calls == ["restart"]

    def at(self, seconds_after_start: float) -> list[int]:
        """Move the clock and run one tick of the decision thread; the incidents it opened, run to their end."""
        self.clock.set(self.start + seconds_after_start)
        opened = self.executor.retry_refused()
        self.executor.wait(5)
        return opened

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.events if k == kind]


def test_a_finding_refused_by_the_backoff_and_still_active_is_acted_on_when_the_backoff_ends(tmp_path: Path) -> None:
    bed = Bed(tmp_path)
    bed.begin()
    bed.clock.set(bed.start + 10)
    assert bed.executor.on_finding(bed.finding("errors")) is None  # 10 s into the 30 s backoff
    [refused] = bed.kinds("refused")
    assert "backing off" in refused["why"]
    for t in (10, 20, 29.5):
        assert bed.at(t) == []  # still backing off: no restart, and no news (one refusal journalled)
    assert len(bed.kinds("refused")) == 1 and len(bed.executor.refusals) == 1
    [incident_id] = bed.at(BACKOFF_S)
    assert bed.docker.calls == ["restart", "restart"]
    incident = bed.journal.incident(incident_id)
    assert incident is not None and incident.rule_id == "errors"
    [retried] = bed.kinds("retried")
    assert retried["incident"] == incident_id and "backing off" in retried["why"]
    assert bed.at(BACKOFF_S + 60) == []  # decided: nothing is retried twice
    assert len(bed.executor.retries) == 0


def test_the_decision_thread_retries_on_its_tick(tmp_path: Path) -> None:
    """As assembled: findings and the retry tick share the decision thread, nobody calls retry by hand."""
    bed = Bed(tmp_path)
    bed.begin()
    decisions = Decisions(bed.executor.on_finding, on_tick=bed.executor.retry_refused, tick_s=0.02).start()
    try:
        bed.clock.set(bed.start + 10)
        decisions.submit(bed.finding("errors"))
        decisions.drain()
        time.sleep(0.1)  # ticks pass inside the backoff
        assert bed.docker.calls == ["restart"]
        bed.clock.set(bed.start + BACKOFF_S + 1)
        wait_until(lambda: bed.docker.calls == ["restart", "restart"])
    finally:
        decisions.stop()
        bed.executor.shutdown()


def test_a_finding_that_resolves_during_the_backoff_is_never_acted_on(tmp_path: Path) -> None:
    bed = Bed(tmp_path)
    bed.begin()
    bed.clock.set(bed.start + 10)
    assert bed.executor.on_finding(bed.finding("errors")) is None
    bed.clock.set(bed.start + 20)
    bed.executor.on_finding(bed.finding("errors", resolved=True))  # the replica recovered by itself
    assert [d["why"] for d in bed.kinds("retry dropped")] == ["resolved"]
    assert bed.at(BACKOFF_S) == [] and bed.at(BACKOFF_S + 60) == []
    assert bed.docker.calls == ["restart"]
    assert len(bed.journal.incidents()) == 1


def test_a_refusal_that_does_not_lapse_is_not_retried_forever(tmp_path: Path) -> None:
    bed = Bed(tmp_path, fresh_s=60)
    bed.begin()
    # paused: an operator's word, not a time: never retried
    bed.executor.policy.set_paused(True)
    bed.clock.set(bed.start + 10)
    assert bed.executor.on_finding(bed.finding("errors")) is None
    assert len(bed.executor.retries) == 0
    bed.executor.policy.set_paused(False)

    # capacity: re-checked every tick (a peer may come back), alerted once, dropped once the finding is stale
    bed.shifter.weights[TARGETS[0].key] = 0  # a peer is out of rotation: max_unavailable 1
    bed.clock.set(bed.start + BACKOFF_S + 1)
    assert bed.executor.on_finding(bed.finding("runway")) is None
    fired = len(bed.alerts.fired)
    assert fired == 1 and "unavailable" in bed.kinds("refused")[-1]["why"]
    for t in range(32, 200):
        assert bed.at(t) == []
    assert len(bed.alerts.fired) == fired  # no re-alert per re-check
    whys = [why for _t, rule, why in bed.executor.refusals if rule == "runway"]
    assert len(whys) == 2 and "unavailable" in whys[0] and "old" in whys[1]  # one line when it gave up
    assert len(bed.executor.retries) == 0
    assert bed.docker.calls == ["restart"]


def test_capacity_coming_back_lets_a_still_active_finding_act(tmp_path: Path) -> None:
    bed = Bed(tmp_path)
    bed.begin()
    bed.shifter.weights[TARGETS[0].key] = 0
    bed.clock.set(bed.start + BACKOFF_S + 1)
    assert bed.executor.on_finding(bed.finding("runway")) is None
    assert bed.at(BACKOFF_S + 2) == []
    bed.shifter.weights[TARGETS[0].key] = 2  # the peer is back in rotation
    assert len(bed.at(BACKOFF_S + 3)) == 1
    assert bed.docker.calls == ["restart", "restart"]


def test_two_refused_findings_of_one_replica_open_one_incident(tmp_path: Path) -> None:
    bed = Bed(tmp_path)
    bed.begin()
    bed.clock.set(bed.start + 10)
    assert bed.executor.on_finding(bed.finding("errors")) is None
    bed.clock.set(bed.start + 15)
    assert bed.executor.on_finding(bed.finding("runway")) is None  # a second finding, same replica, meanwhile
    assert len(bed.at(BACKOFF_S)) == 1
    assert [d["why"] for d in bed.kinds("retry dropped")] == ["incident opened"]
    assert bed.at(BACKOFF_S + 61) == [] and bed.at(BACKOFF_S + 119) == []  # not after the next backoff either
    assert bed.docker.calls == ["restart", "restart"]
    assert len(bed.journal.incidents()) == 2


def test_a_finding_from_before_a_verified_restart_is_dropped_not_acted_on_again(tmp_path: Path) -> None:
    """Two rules see the same 500s; the first one's incident restarts and verifies the replica, the
    second one's finding (refused meanwhile) is about the process that restart replaced: acting on
    it would restart a healthy, verified replica (seen on MLServer's error ramp, 2026-12-02)."""
    bed = Bed(tmp_path)
    bed.begin()
    before = Finding(target=SICK, rule_id="errors", predicts=Predicts.HTTP_5XX, ts=bed.start - 0.5)
    bed.clock.set(bed.start + 1)
    assert bed.executor.on_finding(before) is None  # refused (backoff), can lapse
    assert bed.at(BACKOFF_S) == [] and bed.at(BACKOFF_S + 60) == []
    assert bed.docker.calls == ["restart"]
    [dropped] = bed.kinds("retry dropped")
    assert dropped["rule"] == "errors" and "superseded" in dropped["why"]
    assert len(bed.executor.retries) == 0
