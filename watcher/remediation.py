"""The executor: carries out plans against the real world, journalling every step.

Each incident runs on a worker thread (one incident per replica at a time). Every step is written
as intent before it runs and as outcome after. If the watcher dies mid-playbook, :meth:`recover`
resumes each open incident at its first unfinished step after checking the world: a restart whose
intent is journalled counts as done when the container started after the intent (so it never
happens twice); weights are set idempotently. A failure never loops: a failed restart or a failed
verification keeps the replica drained and alerts (HELD); a failed drain changes nothing (FAILED).
"""

from __future__ import annotations

import calendar
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher.actions.base import ActionError, Alert, Alerter, Replica, Restarter, TrafficShifter
from watcher.actions.verify import Verifier
from watcher.clock import Clock, WallClock
from watcher.engine import finding_to_json
from watcher.fleet import Fleet
from watcher.journal import Incident, IncidentState, Journal, StepStatus
from watcher.model import Finding
from watcher.policy import Decision, Policy, Step
from watcher.rulepack.schema import AnyRule, Defaults


@dataclass
class ExecutorConfig:
    model_repo: Path | None = None  # TF Serving model repository (expected version + smoke inputs)
    pinned_versions: dict[str, str] = field(default_factory=dict)  # model -> version
    workers: int = 4
    alert_name: str = "ServingWatcher"


class Interrupted(Exception):
    """The watcher is stopping while a step waits for something only a running watcher can see:
    the step stays journalled as intent, and the next start resumes the incident there."""


class StepFailed(Exception):
    def __init__(self, message: str, hold: bool) -> None:
        super().__init__(message)
        self.hold = hold  # keep the replica drained (True) or restore it (False)


def _docker_time(text: str) -> float:
    """Docker's RFC3339Nano (``2024-05-01T10:00:00.123456789Z``) as epoch seconds."""
    if not text or text.startswith("0001-"):
        return 0.0
    whole, _, rest = text.rstrip("Z").partition(".")
    digits = "".join(ch for ch in rest if ch.isdigit())[:9]
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + (float(f"0.{digits}") if digits else 0.0)


class Executor:
    def __init__(
        self,
        policy: Policy,
        journal: Journal,
        fleet: Fleet,
        shifter: TrafficShifter,
        restarter: Restarter,
        verifier: Verifier,
        alerter: Alerter,
        rules: dict[str, tuple[AnyRule, Defaults]],
        config: ExecutorConfig | None = None,
        clock: Clock | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.policy = policy
        self.journal = journal
        self.fleet = fleet
        self.shifter = shifter
        self.restarter = restarter
        self.verifier = verifier
        self.alerter = alerter
        self.rules = rules
        self.config = config or ExecutorConfig()
        self.clock = clock or WallClock()
        self.on_event = on_event
        self._pool = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="playbook")
        self._lock = threading.Lock()
        self._futures: dict[int, Future[None]] = {}
        self.refusals: list[tuple[str, str, str]] = []  # (target, rule, reason), for status and tests
        self._resolved: dict[tuple[str, str], float] = {}  # (target, rule) -> when its finding last resolved
        self._resolved_cv = threading.Condition()
        self._stopping = False  # set by interrupt_waits(); guarded by _resolved_cv

    # -- entry points ------------------------------------------------------------------------------
    def on_finding(self, finding: Finding) -> int | None:
        """Decide and, if planned, start the incident. Returns the incident id (also for dry runs)."""
        if finding.resolved:
            with self._resolved_cv:
                self._resolved[(finding.target.key, finding.rule_id)] = finding.ts
                self._resolved_cv.notify_all()
            return None
        if finding.rule_id not in self.rules:
            return None
        rule, defaults = self.rules[finding.rule_id]
        now = self.clock.now()
        with self._lock:
            decision = self.policy.decide(finding, rule, defaults, self.fleet.views(), now)
            if decision.steps is None:
                self._refused(finding, decision, now)
                return None
            key = finding.target.key
            replica = self.fleet.replica(key)
            held = self._held(key)
            if held is not None and replica is not None and self.shifter.get_weight(replica) == 0:
                reason = f"held drained by incident #{held}; release it by hand (restore its weight)"
                self._refused(finding, Decision(None, reason), now)
                return None
            if replica is None:
                self._refused(finding, Decision(None, "replica has no load-balancer address/model label"), now)
                return None
            before = self.verifier.served_version(replica)
            plan = [s.to_json() for s in decision.steps]
            state = IncidentState.DRY_RUN if decision.dry_run else IncidentState.RUNNING
            incident_id = self.journal.open_incident(
                key,
                finding.target.service,
                finding.rule_id,
                finding.predicts.value,
                now,
                {**finding_to_json(finding), "version_before": before},
                plan,
                state=state,
                dry_run=decision.dry_run,
                note="dry run: planned, nothing touched" if decision.dry_run else "",
            )
            self.policy.record_action(key, finding.rule_id, now)
            if decision.dry_run:
                return incident_id
            self.policy.busy.add(key)
            self._futures[incident_id] = self._pool.submit(self._run, incident_id)
        return incident_id

    def _held(self, key: str) -> int | None:
        """The id of the latest incident of this replica if it ended HELD (kept drained on purpose)."""
        latest = [i for i in self.journal.incidents(limit=50) if i.target == key and not i.dry_run]
        if latest and latest[-1].state is IncidentState.HELD:
            return latest[-1].id
        return None

    def recover(self) -> list[int]:
        """Resume every incident left running by a watcher that died."""
        resumed = []
        for incident in self.journal.incidents(open_only=True):
            self.policy.busy.add(incident.target)
            with self._lock:
                self._futures[incident.id] = self._pool.submit(self._run, incident.id)
            resumed.append(incident.id)
        return resumed

    def wait(self, timeout_s: float = 300.0) -> None:
        """Block until every submitted incident finished (tests, graceful shutdown)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                pending = [f for f in self._futures.values() if not f.done()]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} incident(s) still running after {timeout_s}s")
            time.sleep(0.1)

    def interrupt_waits(self) -> None:
        """Release steps that wait for findings (the engine is stopping, none will arrive); their
        incidents stay open in the journal for the next start to resume."""
        with self._resolved_cv:
            self._stopping = True
            self._resolved_cv.notify_all()

    def shutdown(self) -> None:
        self.interrupt_waits()
        self._pool.shutdown(wait=True, cancel_futures=False)

    # -- running a plan -----------------------------------------------------------------------------
    def _run(self, incident_id: int) -> None:
        incident = self.journal.incident(incident_id)
        if incident is None:
            return
        try:
            self._carry_out(incident)
        except Exception as exc:
            self.journal.close(incident.id, IncidentState.HELD, self.clock.now(), f"executor error: {exc}")
            self._alert(incident, "critical", f"executor error: {exc}")
        finally:
            self.policy.busy.discard(incident.target)

    def _carry_out(self, incident: Incident) -> None:
        replica = self.fleet.replica(incident.target)
        if replica is None:
            self.journal.close(incident.id, IncidentState.HELD, self.clock.now(), "replica disappeared")
            self._alert(incident, "critical", "replica disappeared during remediation")
            return
        done = {s.idx for s in incident.steps if s.status in (StepStatus.DONE, StepStatus.SKIPPED)}
        failed = [s for s in incident.steps if s.status is StepStatus.FAILED]
        if failed:  # died after a failure was journalled but before the incident was closed
            self._finish_failure(incident, replica, StepFailed(failed[-1].detail, hold=True))
            return
        in_flight = {s.idx: s for s in incident.steps if s.status is StepStatus.INTENT}
        for idx, raw in enumerate(incident.plan):
            if idx in done:
                continue
            step = Step(raw["name"], raw.get("params", {}))
            previous = in_flight.get(idx)
            if previous is not None and self._already_happened(step, replica, previous.started):
                self.journal.outcome(
                    previous.id, StepStatus.DONE, self.clock.now(), "completed before a watcher restart"
                )
                continue
            step_id = (
                previous.id
                if previous is not None
                else self.journal.intent(incident.id, idx, step.name, step.params, self.clock.now())
            )
            self._event("step", {"incident": incident.id, "step": step.name, "target": incident.target})
            try:
                detail = self._do(step, incident, replica)
            except Interrupted:
                self._event("interrupted", {"incident": incident.id, "step": step.name, "target": incident.target})
                return
            except StepFailed as exc:
                self.journal.outcome(step_id, StepStatus.FAILED, self.clock.now(), str(exc))
                self._finish_failure(incident, replica, exc)
                return
            except ActionError as exc:
                self.journal.outcome(step_id, StepStatus.FAILED, self.clock.now(), str(exc))
                self._finish_failure(incident, replica, StepFailed(str(exc), hold=step.name != "drain"))
                return
            self.journal.outcome(step_id, StepStatus.DONE, self.clock.now(), detail)
            if step.name == "hold":
                self.journal.close(incident.id, IncidentState.HELD, self.clock.now(), "held drained as the rule says")
                return
        self.journal.close(incident.id, IncidentState.RESOLVED, self.clock.now())
        self._event("resolved", {"incident": incident.id, "target": incident.target})

    def _already_happened(self, step: Step, replica: Replica, intent_ts: float) -> bool:
        """For a step whose intent was journalled but not its outcome: did it take effect?"""
        if step.name in ("restart", "recreate"):
            state = self.restarter.state(replica.target)
            return _docker_time(str(state.get("started_at", ""))) > intent_ts
        return False  # every other step is idempotent: simply run it again

    def _finish_failure(self, incident: Incident, replica: Replica, exc: StepFailed) -> None:
        now = self.clock.now()
        if exc.hold:
            try:
                self.shifter.set_weight(replica, 0)
            except ActionError as drain_error:
                self.journal.close(
                    incident.id, IncidentState.HELD, now, f"{exc}; could not keep drained: {drain_error}"
                )
                self._alert(incident, "critical", f"{exc}; could not keep drained: {drain_error}")
                return
            self.journal.close(incident.id, IncidentState.HELD, now, f"kept drained: {exc}")
            self._alert(incident, "critical", f"replica kept drained: {exc}")
        else:
            self._restore(replica)
            self.journal.close(incident.id, IncidentState.FAILED, now, str(exc))
            self._alert(incident, "warning", f"remediation failed, nothing changed: {exc}")
        self._event("failed", {"incident": incident.id, "target": incident.target, "why": str(exc)})

    def _restore(self, replica: Replica) -> None:
        with contextlib.suppress(ActionError):
            self.shifter.set_weight(replica, self.shifter.original_weight(replica))

    # -- the steps ---------------------------------------------------------------------------------
    def _do(self, step: Step, incident: Incident, replica: Replica) -> str:
        p = step.params
        if step.name == "drain":
            self.shifter.set_weight(replica, 0)
            return "weight 0"
        if step.name == "weight":
            self.shifter.set_weight(replica, int(p["weight"]))
            return f"weight {p['weight']}"
        if step.name == "wait_idle":
            if not getattr(self.shifter, "confirms_idle", False):
                time.sleep(float(p.get("settle_s", 0.0)))  # a blind LB: give it time to notice the weight
            idle = self.shifter.wait_idle(replica, float(p.get("timeout_s", 30.0)))
            return "idle" if idle else "in-flight requests still running at the deadline; going on"
        if step.name == "await_resolved":
            return self._await_resolved(incident, float(p.get("timeout_s", 600.0)))
        if step.name in ("restart", "recreate"):
            started = _docker_time(str(self.restarter.state(replica.target).get("started_at", "")))
            if started > incident.opened:
                # Docker's restart policy already brought it back after the incident opened (a crash
                # or an OOM kill while drained): a second restart would only cost time and budget.
                return "skipped: the container already restarted after the incident opened"
            _rule, defaults = self.rules.get(incident.rule_id, (None, Defaults()))
            self.policy.record_restart(incident.target, self.clock.now(), defaults.max_restarts.per)
            try:
                if step.name == "restart":
                    self.restarter.restart(replica.target, float(p.get("stop_timeout_s", 10.0)))
                else:
                    self.restarter.recreate(replica.target)
            except ActionError as exc:
                raise StepFailed(f"{step.name} failed: {exc}", hold=True) from exc
            return "container running again"
        if step.name == "wait_available":
            try:
                version = self.verifier.wait_available(replica, float(p.get("timeout_s", 60.0)))
            except ActionError as exc:
                raise StepFailed(f"model not AVAILABLE after restart: {exc}", hold=True) from exc
            return f"version {version} AVAILABLE"
        if step.name == "verify":
            return self._verify(incident, replica, float(p.get("settle_s", 0.0)))
        if step.name == "alert":
            self._alert(incident, str(p.get("severity", "warning")), f"{incident.rule_id}: {incident.predicts}")
            return "alert sent"
        if step.name == "hold":
            self.shifter.set_weight(replica, 0)
            self._alert(incident, "critical", f"replica held drained ({incident.predicts}); a restart will not fix it")
            return "held drained"
        if step.name == "restore":
            weight = self.shifter.original_weight(replica)
            self.shifter.set_weight(replica, weight)
            return f"weight {weight} restored"
        raise StepFailed(f"unknown step {step.name!r}", hold=False)

    def _await_resolved(self, incident: Incident, timeout_s: float) -> str:
        """Keep the weight until the finding that opened the incident resolves (bounded)."""
        key = (incident.target, incident.rule_id)
        deadline = time.monotonic() + timeout_s
        with self._resolved_cv:
            while self._resolved.get(key, float("-inf")) < incident.opened:
                if self._stopping:
                    raise Interrupted(f"stopping while waiting for {incident.rule_id} to resolve")
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"finding still firing after {timeout_s:.0f}s; restoring anyway"
                self._resolved_cv.wait(timeout=min(left, 1.0))
        return "finding resolved"

    def _verify(self, incident: Incident, replica: Replica, settle_s: float) -> str:
        time.sleep(settle_s)
        pinned = self.config.pinned_versions.get(replica.model)
        before = incident.finding.get("version_before")
        base = self.config.model_repo / replica.model if self.config.model_repo is not None else None
        expected = self.verifier.expected_version(base, pinned, before)
        served = self.verifier.served_version(replica)
        failure = self.verifier.load_failed(replica)
        if failure:
            raise StepFailed(f"model load failed: {failure}", hold=True)
        if expected is not None and served != expected:
            raise StepFailed(f"version mismatch: serving {served}, expected {expected}", hold=True)
        if expected is not None and self.config.model_repo is not None:
            try:
                self.verifier.smoke(replica, expected, self.config.model_repo)
            except ActionError as exc:
                raise StepFailed(f"smoke prediction failed: {exc}", hold=True) from exc
        return f"serving version {served} (expected {expected}); smoke prediction ok"

    # -- alerts and events --------------------------------------------------------------------------
    def _alert(self, incident: Incident, severity: str, summary: str) -> None:
        replica = self.fleet.replica(incident.target)
        alert = Alert.build(
            self.config.alert_name,
            replica.target if replica is not None else None,
            severity=severity,
            labels={
                "target": incident.target,
                "rule": incident.rule_id,
                "predicts": incident.predicts,
                "incident": str(incident.id),
            },
            annotations={"summary": summary},
            starts_at=self.clock.now(),
        )
        try:
            self.alerter.fire(alert)
        except ActionError as exc:
            self._event("alert_failed", {"incident": incident.id, "error": str(exc)})

    def escalate(self, key: str, summary: str, rule_id: str = "") -> None:
        """One alert per (replica, rule, kind of refusal); the alerter drops repeats in its window."""
        kind = summary.split(":", 1)[-1].split("(")[0].strip()[:60]
        alert = Alert.build(
            self.config.alert_name + "Escalation",
            None,
            severity="critical",
            labels={"target": key, "rule": rule_id, "reason": kind},
            annotations={"summary": summary},
            starts_at=self.clock.now(),
        )
        try:
            self.alerter.fire(alert)
        except ActionError as exc:
            self._event("alert_failed", {"target": key, "error": str(exc)})

    def _refused(self, finding: Finding, decision: Decision, now: float) -> None:
        self.refusals.append((finding.target.key, finding.rule_id, decision.reason))
        self._event("refused", {"target": finding.target.key, "rule": finding.rule_id, "why": decision.reason})
        if decision.escalate:
            self.escalate(finding.target.key, decision.escalate, finding.rule_id)

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)
