"""The alerts a playbook sends, with the lifecycle Alertmanager expects.

An incident's alert stays active for as long as the incident does: it is re-sent every
``alert_resend_s`` (each delivery carries ``endsAt`` = delivery time + a TTL of three periods, see
:func:`watcher.actions.alerts.alertmanager_payload`), and resolved, with ``endsAt`` = now, when the
incident ends: its playbook finished, or the replica it held drained is back in rotation. Sent
once, Alertmanager would have ended it ``resolve_timeout`` (5 min) after it started, and "replica
held drained" would clear itself while the replica stayed drained.

What is active is kept in the store (``incident_alerts``), so a watcher restarted mid-incident
goes on re-sending the alerts of the incidents the journal still shows open, and resolves those
that ended while it was down. An alert that cannot be delivered never stops a playbook: it
becomes an ``alert_failed`` event.

Labels: ``alertname``, ``severity``, ``service``, the replica label the Prometheus series carry
(``replica`` by default: ``equal: [replica]`` in an inhibit rule then means the same replica for the
watcher's alerts and Prometheus'), the rule's ``labels:``, and ``incident``. Annotations: a summary
saying what happened on which replica, a description with the finding's ETA and evidence and the
rule's description, ``runbook_url``, then the rule's and the alert step's own ``annotations``.
"""

from __future__ import annotations

import dataclasses
import logging
import string
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from watcher.actions.base import ActionError, Alert, Alerter, Replica
from watcher.actions.outbox import alert_from_json, alert_to_json
from watcher.clock import Clock
from watcher.journal import IncidentState
from watcher.store import StoreError
from watcher.timefmt import format_rfc3339

if TYPE_CHECKING:
    from watcher.journal import Incident, Journal
    from watcher.rulepack.schema import AnyRule

log = logging.getLogger("watcher")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incident_alerts (incident_id INTEGER PRIMARY KEY, alert TEXT NOT NULL);
"""

EVIDENCE_LINES = 3  # evidence quoted in a description: enough to recognise the failure on a phone
EVIDENCE_CHARS = 300


def format_eta(seconds: float) -> str:
    """``95`` -> ``1m35s``: how a person reads a countdown."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class IncidentAlerts:
    def __init__(
        self,
        alerter: Callable[[], Alerter],
        alert_name: Callable[[], str],
        replica_of: Callable[[str], Replica | None],
        clock: Callable[[], Clock],
        event: Callable[[str, dict[str, Any]], None],
        *,
        journal: Journal | None = None,
        rule_of: Callable[[str], AnyRule | None] = lambda _rule_id: None,
        held_drained: Callable[[Incident], bool] = lambda _incident: True,
        resend_s: Callable[[], float] = lambda: 60.0,
        external_url: Callable[[], str] = lambda: "",
        replica_label: Callable[[], str] = lambda: "replica",
    ) -> None:
        # callables, not values: the executor's actuators and config may be swapped after it is built
        self._alerter, self._name, self._replica_of, self._clock, self._event = (
            alerter,
            alert_name,
            replica_of,
            clock,
            event,
        )
        self._journal, self._rule_of, self._held_drained = journal, rule_of, held_drained
        self._resend_s, self._external_url, self._replica_label = resend_s, external_url, replica_label
        self._lock = threading.Lock()
        self._active: dict[int, Alert] = {}  # incident id -> its alert, while the incident is open
        self._loaded = journal is None  # the store's active alerts are read on the first tick
        self._last_tick: float | None = None
        if journal is not None:
            journal.store.migrate(_SCHEMA)

    # -- what the playbook calls ---------------------------------------------------------------------
    def incident(
        self,
        incident: Incident,
        severity: str,
        summary: str | None = None,
        *,
        annotations: Mapping[str, str] | None = None,
        receiver: str | None = None,
    ) -> None:
        """Raise (or raise again, with this severity and text) the incident's alert.

        ``summary`` says what happened (``None``: what the finding predicts); the replica's name is
        put in front. An incident the journal already shows ended (FAILED: nothing left changed) gets
        an alert with an explicit end, three re-send periods on, instead of one that is kept active."""
        current = self._journal.incident(incident.id) if self._journal is not None else None
        state = current.state if current is not None else incident.state
        alert = self.build(incident, severity, summary, annotations=annotations, receiver=receiver)
        now = self._clock().now()
        ended = state not in (IncidentState.RUNNING, IncidentState.HELD)
        with self._lock:
            previous = self._active.pop(incident.id, None) if ended else self._active.get(incident.id)
            if ended and previous is not None:
                self._forget(incident.id)  # this alert replaces it; a tick must not resolve it early
            elif not ended:
                self._active[incident.id] = alert
                self._save(incident.id, alert)
        if ended:
            alert = dataclasses.replace(alert, ends_at=now + 3 * self._resend_s())
        self._send(alert, incident.id)
        if previous is not None and previous.fingerprint != alert.fingerprint:
            self._resolve(previous, incident.id, now)  # a new severity is a new alert: end the old one (after)

    def ended(self, incident_id: int) -> None:
        """The incident is over: resolve its alert now (not at the next tick)."""
        with self._lock:
            alert = self._active.pop(incident_id, None)
            if alert is not None:
                self._forget(incident_id)
        if alert is not None:
            self._resolve(alert, incident_id, self._clock().now())

    def tick(self, now: float) -> None:
        """Called often (the service's housekeeping loop); every ``alert_resend_s`` re-sends the
        alerts of the incidents still open and resolves those that ended."""
        if not self._loaded:
            self._load()
        if self._last_tick is not None and now - self._last_tick < self._resend_s():
            return
        self._last_tick = now
        with self._lock:
            active = list(self._active.items())
        for incident_id, alert in active:
            if self._still_open(incident_id):
                self._send(alert, incident_id)
            else:
                self.ended(incident_id)

    def active(self) -> dict[int, Alert]:
        """The alerts kept active, by incident (status, tests)."""
        with self._lock:
            return dict(self._active)

    def escalate(self, key: str, summary: str, rule_id: str = "") -> None:
        """One alert per (replica, rule, kind of refusal); the alerter drops repeats in its window.

        Not re-sent: a refusal is a moment, not a state. It stays active for the TTL of its delivery
        (three re-send periods) and again each time the same refusal recurs."""
        kind = summary.split(":", 1)[-1].split("(")[0].strip()[:60]
        replica = self._replica_of(key)
        container = replica.target.container if replica is not None else key.rsplit("/", 1)[-1]
        labels = {"target": key, "rule": rule_id, "reason": kind, self._replica_label(): container}
        if replica is not None and replica.target.service:
            labels["service"] = replica.target.service
        alert = Alert.build(
            self._name() + "Escalation",
            None,
            severity="critical",
            labels=labels,
            annotations={"summary": f"{container}: not remediated: {summary}"},
            starts_at=self._clock().now(),
        )
        try:
            self._alerter().fire(alert)
        except ActionError as exc:
            self._event("alert_failed", {"target": key, "error": str(exc)})

    # -- the alert itself ---------------------------------------------------------------------------
    def build(
        self,
        incident: Incident,
        severity: str,
        summary: str | None = None,
        *,
        annotations: Mapping[str, str] | None = None,
        receiver: str | None = None,
    ) -> Alert:
        rule = self._rule_of(incident.rule_id)
        finding = incident.finding
        replica = self._replica_of(incident.target)
        target = replica.target if replica is not None else finding.target
        eta = format_eta(finding.eta_s) if finding.eta_s is not None else ""
        what = summary or (f"{incident.predicts} predicted in {eta}" if eta else f"{incident.predicts} detected")
        labels: dict[str, str] = dict(rule.labels) if rule is not None else {}
        labels.update(rule=incident.rule_id, predicts=incident.predicts, incident=str(incident.id))
        if receiver:
            labels["receiver"] = receiver  # the shipped alertmanager.yml routes on it
        values = {
            "replica": target.container,
            "service": target.service or "",
            "target": incident.target,
            "rule": incident.rule_id,
            "predicts": incident.predicts,
            "eta": eta,
            "incident": str(incident.id),
        }
        notes: dict[str, str] = {
            "summary": f"{target.container}: {what}",
            "description": self._description(incident, rule, eta),
        }
        runbook = (rule.runbook_url if rule is not None else None) or ""
        if runbook:
            notes["runbook_url"] = runbook
        extra = {**(dict(rule.annotations) if rule is not None else {}), **dict(annotations or {})}
        for key, text in extra.items():  # $replica, $eta ... filled in; an unknown $name stays as written
            notes[key] = string.Template(text).safe_substitute(values)
        base = self._external_url().rstrip("/")
        return Alert.build(
            self._name(),
            target,
            severity=severity,
            labels=labels,
            annotations=notes,
            starts_at=incident.opened,
            replica_label=self._replica_label(),
            generator_url=f"{base}/incidents/{incident.id}" if base else "",
        )

    @staticmethod
    def _description(incident: Incident, rule: AnyRule | None, eta: str) -> str:
        finding = incident.finding
        parts = [rule.description.strip()] if rule is not None and rule.description.strip() else []
        line = f"Rule {incident.rule_id} predicts {incident.predicts}"
        line += f", ETA {eta} from {_hhmmss(finding.ts)} UTC" if eta else ""
        parts.append(line + f" (score {finding.score:.2f}); incident #{incident.id}.")
        if finding.evidence:
            quoted = [e if len(e) <= EVIDENCE_CHARS else e[: EVIDENCE_CHARS - 1] + "…" for e in finding.evidence]
            more = len(quoted) - EVIDENCE_LINES
            parts.append(
                "Evidence:\n"
                + "\n".join(f"  {e}" for e in quoted[:EVIDENCE_LINES])
                + (f"\n  (+{more} more)" if more > 0 else "")
            )
        return "\n".join(parts)

    # -- delivery and memory ------------------------------------------------------------------------
    def _still_open(self, incident_id: int) -> bool:
        if self._journal is None:
            return True
        incident = self._journal.incident(incident_id)
        if incident is None:
            return False
        if incident.state is IncidentState.RUNNING:
            return True
        if incident.state is IncidentState.HELD:
            try:
                return self._held_drained(incident)
            except ActionError:
                return True  # cannot ask the load balancer: keep paging rather than clear it blind
        return False

    def _send(self, alert: Alert, incident_id: int) -> None:
        try:
            self._alerter().fire(alert)
        except ActionError as exc:
            self._event("alert_failed", {"incident": incident_id, "error": str(exc)})

    def _resolve(self, alert: Alert, incident_id: int, now: float) -> None:
        try:
            self._alerter().resolve(dataclasses.replace(alert, ends_at=now))
        except ActionError as exc:
            self._event("alert_failed", {"incident": incident_id, "error": str(exc)})

    def _load(self) -> None:
        assert self._journal is not None
        with self._journal.store.reading() as db:
            rows = db.execute("SELECT incident_id, alert FROM incident_alerts ORDER BY incident_id").fetchall()
        with self._lock:
            for incident_id, text in rows:
                self._active.setdefault(int(incident_id), alert_from_json(text))
            self._loaded = True

    def _save(self, incident_id: int, alert: Alert) -> None:
        """The caller holds ``_lock``. A store that cannot be written keeps the alert in memory only."""
        if self._journal is None:
            return
        try:
            with self._journal.store.transaction() as db:
                db.execute(
                    "INSERT OR REPLACE INTO incident_alerts (incident_id, alert) VALUES (?, ?)",
                    (incident_id, alert_to_json(alert)),
                )
        except StoreError as exc:
            log.warning("active alert not stored", extra={"fields": {"incident": incident_id, "error": str(exc)}})

    def _forget(self, incident_id: int) -> None:
        if self._journal is None:
            return
        try:
            with self._journal.store.transaction() as db:
                db.execute("DELETE FROM incident_alerts WHERE incident_id = ?", (incident_id,))
        except StoreError as exc:  # the next start re-sends it once, finds the incident ended, resolves it
            log.warning("ended alert not forgotten", extra={"fields": {"incident": incident_id, "error": str(exc)}})


def _hhmmss(ts: float) -> str:
    return format_rfc3339(ts)[11:19]
