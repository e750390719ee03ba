"""The executor: carries out plans against the real world, journalling every step.

Each incident runs on a worker thread (one incident per replica at a time). Every step is written
as intent before it runs and as outcome after. If the watcher dies mid-playbook, :meth:`recover`
resumes each open incident at its first unfinished step after asking that step whether it already
took effect (:meth:`Step.already_happened`: a restart whose intent is journalled counts as done when
the container started after the intent, so it never happens twice; weights are set idempotently).
A failure never loops: a failed restart or a failed verification keeps the replica drained and
alerts (HELD); a failed drain changes nothing (FAILED). A change the load balancer *refused*
(:class:`~watcher.actions.base.ChangeRefused`: Nginx kept its old config) holds the incident where
it is (HELD, critical alert with the load balancer's reason): the same change would be refused
again, and restarting a replica whose traffic could not be moved is the outage we avoid.

The executor knows no step by name: what a step does, and what the loop must do around it, is the
step's own (see :mod:`watcher.playbook.base`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from watcher.actions.base import ActionError, Alerter, ChangeRefused, Replica, Restarter, TrafficShifter
from watcher.actions.verify import Verifier
from watcher.clock import Clock, WallClock
from watcher.fleet import Fleet
from watcher.journal import Incident, IncidentState, Journal, StepStatus
from watcher.model import SERIES_ONLY_ENGINE, Finding
from watcher.playbook.alerting import IncidentAlerts, format_eta
from watcher.playbook.base import Interrupted, Step, StepFailed
from watcher.playbook.context import ExecutorConfig, StepContext
from watcher.playbook.resolutions import ResolvedFindings
from watcher.playbook.retries import Refused, RefusedFindings
from watcher.policy import Decision, Policy
from watcher.rulepack.schema import AnyRule, Defaults
from watcher.store import StoreError

__all__ = ["Executor", "ExecutorConfig"]

log = logging.getLogger("watcher")

VERSION_BEFORE_WAIT_S = 0.25  # a serving replica answers its status call in milliseconds
TRAFFIC_FIRST = frozenset({"drain", "weight"})  # steps that never wait for the version served before
MAX_REFUSALS = 1000  # the most recent refusals kept for status and tests
STORE_NOT_WRITABLE = "store not writable"  # the refusal when the journal cannot record the plan


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
        self.alerts = IncidentAlerts(
            alerter=lambda: self.alerter,
            alert_name=lambda: self.config.alert_name,
            replica_of=lambda key: self.fleet.replica(key),
            clock=lambda: self.clock,
            event=self._event,
            journal=journal,
            rule_of=lambda rule_id: self.rules[rule_id][0] if rule_id in self.rules else None,
            held_drained=self._still_drained,
            resend_s=lambda: self.config.alert_resend_s,
            external_url=lambda: self.config.external_url,
            replica_label=lambda: self.config.replica_label,
        )
        self.resolved = ResolvedFindings()
        self._pool = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="playbook")
        # the version a replica serves when its incident opens, asked off the decision path: a hung
        # replica must not hold its own drain back by the length of a version query's timeout
        self._lookups = ThreadPoolExecutor(max_workers=2, thread_name_prefix="version-before")
        self._lock = threading.Lock()
        self._futures: dict[int, Future[None]] = {}  # incidents still running (finished ones are pruned)
        self._before: dict[int, tuple[Future[str | None], float]] = {}  # incident -> version query, deadline
        self.refusals: deque[tuple[str, str, str]] = deque(maxlen=MAX_REFUSALS)  # (target, rule, reason)
        self.retries = RefusedFindings()  # refused, still active, and the refusal can lapse

    # -- entry points ------------------------------------------------------------------------------
    def on_finding(self, finding: Finding) -> int | None:
        """Decide and, if planned, start the incident. Returns the incident id (also for dry runs)."""
        if finding.resolved:
            self.resolved.mark(finding.target.key, finding.rule_id, finding.ts)
            if self.retries.discard(finding.target.key, finding.rule_id) is not None:
                self._event("retry dropped", {"target": finding.target.key, "rule": finding.rule_id, "why": "resolved"})
            return None
        if finding.rule_id not in self.rules:
            return None
        return self._decide(finding, self.clock.now())

    def retry_refused(self) -> list[int]:
        """Decide again every refused, still-active finding whose refusal can have lapsed by now (the
        decision thread's tick). A refusal that still holds is rescheduled quietly; one that holds for
        good, or an incident, is journalled as a first decision would be. Returns the incidents opened."""
        now = self.clock.now()
        opened = []
        changed: set[str | None] = set()  # services an incident of this tick is changing
        for entry in self.retries.due(now):
            if (entry.finding.target.key, entry.finding.rule_id) not in self.retries:
                continue  # an incident opened earlier in this tick for its replica took it out
            if entry.finding.target.service in changed:
                # one capacity change per service per tick: the next tick decides on a fleet view
                # that shows the first one's effect (two findings refused for capacity together
                # must not both act the moment capacity frees up)
                continue
            if entry.finding.rule_id not in self.rules:  # a reload dropped the rule
                self.retries.discard(entry.finding.target.key, entry.finding.rule_id)
                continue
            key = entry.finding.target.key
            restarted = self.journal.verified_restart_after(key, entry.finding.ts)
            if restarted is not None:  # its evidence came from the process that restart replaced
                self.retries.discard(key, entry.finding.rule_id)
                why = f"superseded: the replica was restarted {restarted - entry.finding.ts:.1f}s after it and verified"
                self._event("retry dropped", {"target": key, "rule": entry.finding.rule_id, "why": why})
                continue
            incident = self._decide(entry.finding, now, retrying=entry)
            if incident is not None:
                opened.append(incident)
                changed.add(entry.finding.target.service)
        return opened

    def _decide(self, finding: Finding, now: float, retrying: Refused | None = None) -> int | None:
        rule, defaults = self.rules[finding.rule_id]
        with self._lock:
            key = finding.target.key
            decision = self.policy.decide(
                finding, rule, defaults, self.fleet.views(), now, restart_takes_s=self.journal.restart_duration(key)
            )
            if decision.plan is None:
                self._refused(finding, decision, now, retrying)
                return None
            replica = self.fleet.replica(key)
            held = self._held(key)
            if held is not None and replica is not None and self.shifter.get_weight(replica) == 0:
                reason = f"held drained by incident #{held}; release it by hand (restore its weight)"
                self._refused(finding, Decision(None, reason), now)
                return None
            # a replica known only by its Prometheus series (no Docker engine: observe-and-alert):
            # nothing can act on it, so the plan is journalled and alerted as a dry run
            observe_only = replica is None and finding.target.engine == SERIES_ONLY_ENGINE
            if replica is None and not observe_only:
                self._refused(finding, Decision(None, "replica has no load-balancer address/model label"), now)
                return None
            dry_run = decision.dry_run or observe_only
            # a dry run waits (briefly) for the version, which nothing is in a hurry for; a real
            # incident asks in the background and drains at once (:meth:`_settle_version_before`)
            lookup = self._lookups.submit(self.verifier.served_version, replica) if replica is not None else None
            before = self._version_before(lookup) if lookup is not None and dry_run else None
            if observe_only:
                note = "observe-and-alert: no Docker engine watches this replica; nothing touched"
            else:
                note = "dry run: planned, nothing touched" if dry_run else ""
            try:
                incident_id = self.journal.open_incident(
                    finding,
                    decision.plan,
                    now,
                    version_before=before,
                    state=IncidentState.DRY_RUN if dry_run else IncidentState.RUNNING,
                    dry_run=dry_run,
                    note=note,
                )
            except StoreError as exc:  # no step runs that the journal could not hand to the next start
                alert = f"store not writable, not acting on {key} ({finding.rule_id}): {exc}"
                self._refused(finding, Decision(None, STORE_NOT_WRITABLE, escalate=alert), now)
                return None
            self.policy.record_action(key, finding.rule_id, now, decision.plan.changes_fleet)
            self.retries.discard(key, finding.rule_id)  # decided: a retried finding leaves the set quietly
            for dropped in self.retries.discard_target(key):  # this incident owns the replica now
                self._event("retry dropped", {"target": key, "rule": dropped.finding.rule_id, "why": "incident opened"})
            if retrying is not None:
                why = f"refused earlier ({retrying.reason}), still active"
                self._event("retried", {"target": key, "rule": finding.rule_id, "incident": incident_id, "why": why})
            if dry_run:
                self._alert_dry_run(incident_id, note)
                return incident_id
            self.policy.busy.add(key)
            if lookup is not None:
                self._before[incident_id] = (lookup, time.monotonic() + VERSION_BEFORE_WAIT_S)
            self._submit(incident_id)
        return incident_id

    @staticmethod
    def _version_before(lookup: Future[str | None], wait_s: float = VERSION_BEFORE_WAIT_S) -> str | None:
        """What the replica serves now, if it says so within ``wait_s``; else None (verification
        then expects the pinned or the repository's version, as for a replica that was down).
        Measured: on a hung replica the 2 s query put its drain 2 s after the finding, and every
        request Nginx sent it meanwhile failed; a 0.25 s wait before the drain still cost a hung
        replica's clients a quarter of a second of requests."""
        try:
            return lookup.result(timeout=max(wait_s, 0.0))
        except FutureTimeout:
            return None
        except Exception:  # the query itself failed: the same as no answer
            return None

    def _settle_version_before(self, incident: Incident) -> Incident:
        """Before the first step after the traffic moved (restart, wait, verify...): the version
        the replica served when the incident opened, if its query answered within
        :data:`VERSION_BEFORE_WAIT_S` of the opening, recorded in the journal (verify reads it
        there, also after a restart of the watcher)."""
        with self._lock:
            pending = self._before.pop(incident.id, None)
        if pending is None:
            return incident
        lookup, deadline = pending
        version = self._version_before(lookup, deadline - time.monotonic())
        if version is None:
            return incident
        self.journal.set_version_before(incident.id, version)
        return self.journal.incident(incident.id) or incident

    def _alert_dry_run(self, incident_id: int, note: str) -> None:
        """A dry run tells a human what was found and what would have been done: the alert is the
        whole of its effect (it ends by itself three re-send periods on, the incident being over)."""
        incident = self.journal.incident(incident_id)
        if incident is None:
            return
        steps = ", ".join(step.kind for step in incident.plan)
        eta = f" in {format_eta(incident.finding.eta_s)}" if incident.finding.eta_s is not None else ""
        what = f"{incident.predicts} predicted{eta}" if eta else f"{incident.predicts} detected"
        self.alerts.incident(incident, incident.finding.severity.value, f"{what}; {note} (would: {steps})")

    def _held(self, key: str) -> int | None:
        """The id of the latest incident of this replica if it ended HELD (kept drained on purpose)."""
        latest = [i for i in self.journal.incidents(limit=50) if i.target == key and not i.dry_run]
        if latest and latest[-1].state is IncidentState.HELD:
            return latest[-1].id
        return None

    def _still_drained(self, incident: Incident) -> bool:
        """A HELD incident lasts while its replica is out of rotation: restoring the weight by hand
        (or a later incident of the replica) ends it, and its alert is resolved. A replica the fleet
        cannot see now (Docker unreachable, container removed) counts as still held: an alert is
        cleared only on evidence, and a removed container's alert is one silence away."""
        if self._held(incident.target) != incident.id:
            return False  # a later incident of this replica: this one was released
        replica = self.fleet.replica(incident.target)
        if replica is None:
            return True
        return self.shifter.get_weight(replica) == 0

    def recover(self) -> list[int]:
        """Resume every incident left running by a watcher that died."""
        resumed = []
        for incident in self.journal.incidents(open_only=True):
            self.policy.busy.add(incident.target)
            with self._lock:
                self._submit(incident.id)
            resumed.append(incident.id)
        return resumed

    def _submit(self, incident_id: int) -> None:
        """Start the incident on a worker; the caller holds ``_lock``."""
        for done in [i for i, f in self._futures.items() if f.done()]:
            del self._futures[done]
        self._futures[incident_id] = self._pool.submit(self._run, incident_id)

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
        self.resolved.interrupt()

    def shutdown(self) -> None:
        self.interrupt_waits()
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._lookups.shutdown(wait=False, cancel_futures=True)

    def escalate(self, key: str, summary: str, rule_id: str = "") -> None:
        """One alert per (replica, rule, kind of refusal); the alerter drops repeats in its window."""
        self.alerts.escalate(key, summary, rule_id)

    # -- running a plan -----------------------------------------------------------------------------
    def _run(self, incident_id: int) -> None:
        incident = self.journal.incident(incident_id)
        if incident is None:
            return
        try:
            self._carry_out(incident)
        except StoreError as exc:
            # A step's intent or outcome could not be journalled: stop before the next step. The
            # journal still shows the incident running at its last journalled step, which is where
            # the next start resumes it (it checks whether an in-flight step already happened).
            self.alerts.incident(incident, "critical", f"{STORE_NOT_WRITABLE}: incident stopped, resumes at next start")
            self._event("failed", {"incident": incident.id, "target": incident.target, "why": str(exc)})
        except Exception as exc:
            self.journal.close(incident.id, IncidentState.HELD, self.clock.now(), f"executor error: {exc}")
            self.alerts.incident(incident, "critical", f"executor error: {exc}")
        finally:
            self.policy.busy.discard(incident.target)
            with self._lock:
                self._before.pop(incident.id, None)  # a plan with no step after the traffic moved

    def _context(self, incident: Incident, replica: Replica) -> StepContext:
        _rule, defaults = self.rules.get(incident.rule_id, (None, Defaults()))
        return StepContext(
            incident=incident,
            replica=replica,
            shifter=self.shifter,
            restarter=self.restarter,
            verifier=self.verifier,
            alerts=self.alerts,
            policy=self.policy,
            clock=self.clock,
            config=self.config,
            defaults=defaults,
            resolved=self.resolved,
        )

    def _carry_out(self, incident: Incident) -> None:
        replica = self.fleet.replica(incident.target)
        if replica is None:
            self.journal.close(incident.id, IncidentState.HELD, self.clock.now(), "replica disappeared")
            self.alerts.incident(incident, "critical", "replica disappeared during remediation")
            return
        done = {s.idx for s in incident.steps if s.status in (StepStatus.DONE, StepStatus.SKIPPED)}
        failed = [s for s in incident.steps if s.status is StepStatus.FAILED]
        if failed:  # died after a failure was journalled but before the incident was closed
            self._finish_failure(incident, replica, StepFailed(failed[-1].detail, hold=True))
            return
        in_flight = {s.idx: s for s in incident.steps if s.status is StepStatus.INTENT}
        for idx, step in enumerate(incident.plan):
            if idx in done:
                continue
            if step.kind not in TRAFFIC_FIRST:
                incident = self._settle_version_before(incident)
            ctx = self._context(incident, replica)
            previous = in_flight.get(idx)
            if previous is not None and step.already_happened(ctx, previous.started):
                self.journal.outcome(
                    previous.id, StepStatus.DONE, self.clock.now(), "completed before a watcher restart"
                )
                continue
            step_id = (
                previous.id if previous is not None else self.journal.intent(incident.id, idx, step, self.clock.now())
            )
            if not self._step(incident, replica, step, step_id, ctx):
                return
            if step.ends_held:
                self.journal.close(incident.id, IncidentState.HELD, self.clock.now(), "held drained as the rule says")
                return
        self.journal.close(incident.id, IncidentState.RESOLVED, self.clock.now())
        self.alerts.ended(incident.id)
        self._event("resolved", {"incident": incident.id, "target": incident.target})

    def _step(self, incident: Incident, replica: Replica, step: Step, step_id: int, ctx: StepContext) -> bool:
        """Run one journalled step; False when the incident stops here (failed, or the watcher is stopping)."""
        self._event("step", {"incident": incident.id, "step": step.name, "target": incident.target})
        try:
            detail = step.run(ctx)
        except Interrupted:
            self._event("interrupted", {"incident": incident.id, "step": step.name, "target": incident.target})
            return False
        except StepFailed as exc:
            self.journal.outcome(step_id, StepStatus.FAILED, self.clock.now(), str(exc))
            self._finish_failure(incident, replica, exc)
            return False
        except ChangeRefused as exc:
            self.journal.outcome(step_id, StepStatus.FAILED, self.clock.now(), str(exc))
            self._hold_refused(incident, replica, exc)
            return False
        except ActionError as exc:
            self.journal.outcome(step_id, StepStatus.FAILED, self.clock.now(), str(exc))
            self._finish_failure(incident, replica, StepFailed(str(exc), hold=step.hold_on_error))
            return False
        self.journal.outcome(step_id, StepStatus.DONE, self.clock.now(), detail)
        return True

    def _hold_refused(self, incident: Incident, replica: Replica, exc: ChangeRefused) -> None:
        """The load balancer refused a change and runs its previous config: stop here, touch nothing.

        No retry of the change (it would be refused again) and no further step (no restart of a
        replica whose traffic could not be moved). When nothing had been done yet, the cooldown
        stamp is taken back, so once the config is fixed the next finding acts normally.
        """
        now = self.clock.now()
        try:
            weight = f"weight {self.shifter.get_weight(replica)}"
        except ActionError:
            weight = "weight unknown"
        journalled = self.journal.incident(incident.id) or incident
        acted = any(s.status is StepStatus.DONE for s in journalled.steps)
        why = f"held, no further step runs: the load balancer refused the change ({exc}); live {weight}"
        self.journal.close(incident.id, IncidentState.HELD, now, why)
        if not acted:
            self.policy.forget_action(incident.target, incident.rule_id, incident.opened)
        self.alerts.incident(incident, "critical", why)
        self._event("failed", {"incident": incident.id, "target": incident.target, "why": str(exc)})

    def _finish_failure(self, incident: Incident, replica: Replica, exc: StepFailed) -> None:
        now = self.clock.now()
        if exc.hold:
            try:
                self.shifter.set_weight(replica, 0)
            except ActionError as drain_error:
                self.journal.close(
                    incident.id, IncidentState.HELD, now, f"{exc}; could not keep drained: {drain_error}"
                )
                self.alerts.incident(incident, "critical", f"{exc}; could not keep drained: {drain_error}")
                return
            self.journal.close(incident.id, IncidentState.HELD, now, f"kept drained: {exc}")
            self.alerts.incident(incident, "critical", f"replica kept drained: {exc}")
        else:
            with contextlib.suppress(ActionError):
                self.shifter.set_weight(replica, self.shifter.original_weight(replica))
            self.journal.close(incident.id, IncidentState.FAILED, now, str(exc))
            self.alerts.incident(incident, "warning", f"remediation failed, nothing changed: {exc}")
        self._event("failed", {"incident": incident.id, "target": incident.target, "why": str(exc)})

    # -- refusals and events ------------------------------------------------------------------------
    def _refused(self, finding: Finding, decision: Decision, now: float, retrying: Refused | None = None) -> None:
        """Journal a refusal (and escalate it once); keep the finding for a re-decision if it can lapse.
        A re-decision refused again until later is no news: no event, no second alert."""
        key = finding.target.key
        if decision.retry_at is None:
            self.retries.discard(key, finding.rule_id)
        else:
            self.retries.hold(finding, decision.reason, decision.retry_at)
            if retrying is not None:
                return
        self.refusals.append((finding.target.key, finding.rule_id, decision.reason))
        self._event("refused", {"target": finding.target.key, "rule": finding.rule_id, "why": decision.reason})
        if decision.escalate:
            self.escalate(finding.target.key, decision.escalate, finding.rule_id)

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)
