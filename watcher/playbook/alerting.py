"""The alerts a playbook sends: one about an incident, one escalation when a guard rail says no.

An alert that cannot be delivered never stops a playbook: it becomes an ``alert_failed`` event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from watcher.actions.base import ActionError, Alert, Alerter, Replica
from watcher.clock import Clock

if TYPE_CHECKING:
    from watcher.journal import Incident


class IncidentAlerts:
    def __init__(
        self,
        alerter: Callable[[], Alerter],
        alert_name: Callable[[], str],
        replica_of: Callable[[str], Replica | None],
        clock: Callable[[], Clock],
        event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        # callables, not values: the executor's actuators and config may be swapped after it is built
        self._alerter, self._name, self._replica_of, self._clock, self._event = (
            alerter,
            alert_name,
            replica_of,
            clock,
            event,
        )

    def incident(self, incident: Incident, severity: str, summary: str) -> None:
        replica = self._replica_of(incident.target)
        alert = Alert.build(
            self._name(),
            replica.target if replica is not None else None,
            severity=severity,
            labels={
                "target": incident.target,
                "rule": incident.rule_id,
                "predicts": incident.predicts,
                "incident": str(incident.id),
            },
            annotations={"summary": summary},
            starts_at=self._clock().now(),
        )
        try:
            self._alerter().fire(alert)
        except ActionError as exc:
            self._event("alert_failed", {"incident": incident.id, "error": str(exc)})

    def escalate(self, key: str, summary: str, rule_id: str = "") -> None:
        """One alert per (replica, rule, kind of refusal); the alerter drops repeats in its window."""
        kind = summary.split(":", 1)[-1].split("(")[0].strip()[:60]
        alert = Alert.build(
            self._name() + "Escalation",
            None,
            severity="critical",
            labels={"target": key, "rule": rule_id, "reason": kind},
            annotations={"summary": summary},
            starts_at=self._clock().now(),
        )
        try:
            self._alerter().fire(alert)
        except ActionError as exc:
            self._event("alert_failed", {"target": key, "error": str(exc)})
