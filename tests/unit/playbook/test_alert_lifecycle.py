"""An incident's alert lives as long as the incident: re-sent while open, resolved when it ends.

In-memory load balancer and Docker (tests/unit/test_executor.py's fakes); the real Alertmanager sees
the same lifecycle in tests/integration/test_alertmanager_lifecycle.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.unit.test_executor import TARGETS, FakeFleet, FakeShifter, FakeVerifier, NoDocker, wait_until
from watcher.actions.base import Alert
from watcher.journal import IncidentState, Journal
from watcher.model import Finding, Predicts
from watcher.playbook.executor import Executor, ExecutorConfig
from watcher.policy import GuardConfig, Policy
from watcher.rulepack.compile import load_packs
from watcher.store import Store

PACK = """
pack: p
defaults: {cooldown: 10m, max_restarts: {count: 3, per: 1h}, max_unavailable: 1, min_healthy: 1}
rules:
  - id: held
    description: The model cannot load; a restart loads the same broken files.
    match: {log: 'load failed'}
    predicts: load_failure
    severity: critical
    labels: {team: ml}
    runbook_url: https://runbooks.example/load-failure
    annotations: {dashboard: 'https://grafana.example/d/x?var-replica=$replica'}
    then: [drain, {alert: {severity: warning, receiver: team, annotations: {note: 'ETA $eta, unknown $nothing'}}},
           {hold: drained}]
  - id: slow
    match: {log: 'upstream timed out'}
    predicts: latency
    then: [{weight: 0}]
"""
URL = "http://watcher.example:9108"


class Recorder:
    """An alerter that keeps what it was asked to do, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Alert]] = []

    def fire(self, alert: Alert) -> None:
        self.calls.append(("fire", alert))

    def resolve(self, alert: Alert) -> None:
        self.calls.append(("resolve", alert))


def make(tmp_path: Path, shifter: FakeShifter | None = None) -> tuple[Executor, FakeShifter, Recorder, Journal]:
    (tmp_path / "p.yaml").write_text(PACK)
    [pack] = load_packs([tmp_path / "p.yaml"])
    store = Store(tmp_path / "w.db")
    shifter = shifter or FakeShifter()
    alerts = Recorder()
    journal = Journal(store)
    executor = Executor(
        Policy(store, GuardConfig()),
        journal,
        FakeFleet(shifter),  # type: ignore[arg-type]
        shifter,
        NoDocker(),
        FakeVerifier(),  # type: ignore[arg-type]
        alerts,
        {r.id: (r, pack.defaults) for r in pack.rules},
        ExecutorConfig(alert_resend_s=60.0, external_url=URL),
    )
    return executor, shifter, alerts, journal


def finding(rule: str, predicts: Predicts, resolved: bool = False) -> Finding:
    return Finding(
        target=TARGETS[1],
        rule_id=rule,
        predicts=predicts,
        ts=time.time(),
        eta_s=95.0,
        evidence=("E0501 load failed: SavedModel not found", "second line"),
        resolved=resolved,
    )


def test_a_held_incident_alert_is_resent_until_its_replica_is_back_in_rotation(tmp_path: Path) -> None:
    executor, shifter, alerts, journal = make(tmp_path)
    incident_id = executor.on_finding(finding("held", Predicts.LOAD_FAILURE))
    assert incident_id is not None
    executor.wait(5)
    incident = journal.incident(incident_id)
    assert incident is not None and incident.state is IncidentState.HELD
    # the alert step's warning, then the hold's critical, which ends the warning (a new severity is a new alert)
    assert [(k, a.labels["severity"]) for k, a in alerts.calls] == [
        ("fire", "warning"),
        ("fire", "critical"),
        ("resolve", "warning"),
    ]
    warning = alerts.calls[0][1]
    assert warning.labels["receiver"] == "team"
    assert warning.annotations["note"] == "ETA 1m35s, unknown $nothing"
    critical = alerts.calls[1][1]
    assert {k: critical.labels[k] for k in ("alertname", "severity", "service", "replica", "team", "incident")} == {
        "alertname": "ServingWatcher",
        "severity": "critical",
        "service": "m",
        "replica": "tfs-1",
        "team": "ml",
        "incident": str(incident_id),
    }
    notes = critical.annotations
    assert notes["summary"].startswith("tfs-1: replica held drained")
    assert "ETA 1m35s" in notes["description"] and "E0501 load failed: SavedModel not found" in notes["description"]
    assert notes["description"].startswith("The model cannot load")
    assert notes["runbook_url"] == "https://runbooks.example/load-failure"
    assert notes["dashboard"] == "https://grafana.example/d/x?var-replica=tfs-1"
    assert critical.generator_url == f"{URL}/incidents/{incident_id}"
    assert critical.ends_at is None  # no end of its own: each delivery is active for the sink's TTL

    now = time.time()
    alerts.calls.clear()
    executor.alerts.tick(now)
    executor.alerts.tick(now + 30)  # inside the re-send period: nothing
    executor.alerts.tick(now + 61)
    assert [(k, a.fingerprint) for k, a in alerts.calls] == [("fire", critical.fingerprint)] * 2

    shifter.weights[TARGETS[1].key] = 2  # an operator put the replica back into rotation
    alerts.calls.clear()
    executor.alerts.tick(now + 122)
    assert [(k, a.fingerprint) for k, a in alerts.calls] == [("resolve", critical.fingerprint)]
    resolved = alerts.calls[0][1]
    assert resolved.ends_at is not None and resolved.ends_at <= time.time()
    assert executor.alerts.active() == {}
    executor.alerts.tick(now + 183)
    assert len(alerts.calls) == 1  # ended: never re-sent


def test_a_restarted_watcher_resends_what_is_still_open_and_resolves_what_ended_while_it_was_down(
    tmp_path: Path,
) -> None:
    first, shifter, _alerts, _journal = make(tmp_path)
    incident_id = first.on_finding(finding("held", Predicts.LOAD_FAILURE))
    first.wait(5)
    first.shutdown()
    critical = first.alerts.active()[incident_id]  # type: ignore[index]

    second, _shifter, alerts, _journal = make(tmp_path, shifter)  # same store, same load balancer
    now = time.time()
    second.alerts.tick(now)
    assert [(k, a.fingerprint) for k, a in alerts.calls] == [("fire", critical.fingerprint)]
    assert alerts.calls[0][1].annotations == critical.annotations

    shifter.weights[TARGETS[1].key] = 2
    third, _shifter, alerts, _journal = make(tmp_path, shifter)
    third.alerts.tick(now)
    assert [(k, a.fingerprint) for k, a in alerts.calls] == [("resolve", critical.fingerprint)]
    fourth, _shifter, alerts, _journal = make(tmp_path, shifter)
    fourth.alerts.tick(now)
    assert alerts.calls == []  # resolved once, forgotten


def test_a_resolved_incident_resolves_its_alert_at_once(tmp_path: Path) -> None:
    executor, shifter, alerts, journal = make(tmp_path)
    incident_id = executor.on_finding(finding("slow", Predicts.LATENCY))
    assert incident_id is not None
    wait_until(lambda: shifter.weights.get(TARGETS[1].key) == 0)
    incident = journal.incident(incident_id)
    assert incident is not None
    executor.alerts.incident(incident, "warning", "draining while slow")  # as a step would
    assert executor.alerts.active().keys() == {incident_id}
    executor.on_finding(finding("slow", Predicts.LATENCY, resolved=True))
    executor.wait(5)
    assert [k for k, _a in alerts.calls] == ["fire", "resolve"]
    assert executor.alerts.active() == {}


def test_a_failed_incident_alert_ends_on_its_own_and_is_not_resolved_early(tmp_path: Path) -> None:
    """FAILED: nothing left changed, the replica serves again. Its "remediation failed" alert gets an
    explicit end three periods on and the next tick does not resolve it (it replaced the running one)."""
    from watcher.playbook.notify import SendAlert
    from watcher.playbook.plan import Plan

    executor, _shifter, alerts, journal = make(tmp_path)
    incident_id = journal.open_incident(finding("slow", Predicts.LATENCY), Plan([SendAlert()]), time.time())
    incident = journal.incident(incident_id)
    assert incident is not None
    executor.alerts.incident(incident, "warning")  # the alert step, while running
    journal.close(incident_id, IncidentState.FAILED, time.time(), "drain failed")
    before = time.time()
    executor.alerts.incident(incident, "warning", "remediation failed, nothing changed: drain failed")
    assert executor.alerts.active() == {}
    kind, failed = alerts.calls[-1]
    assert kind == "fire" and failed.ends_at is not None and before + 170 <= failed.ends_at <= time.time() + 180
    assert failed.annotations["summary"] == "tfs-1: remediation failed, nothing changed: drain failed"
    executor.alerts.tick(time.time() + 61)
    assert [k for k, _a in alerts.calls] == ["fire", "fire"]
