"""An alert per Docker engine that does not answer, resolved when it answers again.

While an engine's listing fails its replicas are *unknown* (:meth:`watcher.inventory.Snapshot.unknown`):
the watcher takes no action on them and the capacity rails count them as unavailable, so a fault on
the same service elsewhere is handled more conservatively. That is a change in what the watcher can
do, and the operator must hear of it by the engine's name: one alert per outage (re-sent while it
lasts so Alertmanager keeps it active, as the blind-spot alert is), resolved when a listing succeeds.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from watcher.actions.base import ActionError, Alert, Alerter
from watcher.inventory import Inventory
from watcher.timefmt import format_rfc3339

log = logging.getLogger("watcher")


@dataclass
class _Outage:
    alert: Alert
    sent: float


class EngineAlerts:
    """Called on the housekeeping tick with the time; reads the inventory's engine states."""

    def __init__(
        self,
        inventory: Inventory,
        alerter: Callable[[], Alerter],
        resend_s: float = 300.0,
        redact: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.inventory = inventory
        self.alerter = alerter  # looked up at each use: a reload may swap the alerter
        self.resend_s = resend_s
        self.redact = redact
        self._down: dict[str, _Outage] = {}

    @property
    def down(self) -> list[str]:
        return sorted(self._down)

    def check(self, now: float) -> None:
        snapshot = self.inventory.snapshot()
        for engine, state in self.inventory.engine_states().items():
            outage = self._down.get(engine)
            if not state.listed and outage is None:
                replicas = sorted(c.name for c in snapshot.engines.get(engine, {}).values())
                shown = ", ".join(replicas[:10]) + (f" and {len(replicas) - 10} more" if len(replicas) > 10 else "")
                why = f" ({self.redact(state.error)})" if state.error else ""
                summary = (
                    f"Docker engine {engine} unreachable since {format_rfc3339(now)}{why}: its"
                    f" {len(replicas)} replica(s) are unknown ({shown or 'none known'}); no actions on them,"
                    " and the guard rails count them as unavailable"
                )
                alert = Alert.build(
                    "ServingWatcherEngineDown",
                    None,
                    severity="warning",
                    labels={"engine": engine},
                    annotations={"summary": summary},
                    starts_at=now,
                )
                self._down[engine] = _Outage(alert, now)
                log.warning("engine unreachable: its replicas are unknown", extra={"fields": {"engine": engine}})
                self._send(alert, resolve=False)
            elif not state.listed and outage is not None and now - outage.sent >= self.resend_s:
                outage.sent = now
                self._send(outage.alert, resolve=False)  # still down: keep it active
            elif state.listed and outage is not None:
                del self._down[engine]
                log.info(
                    "engine answers again",
                    extra={"fields": {"engine": engine, "down_s": round(now - outage.alert.starts_at, 1)}},
                )
                self._send(dataclasses.replace(outage.alert, ends_at=now), resolve=True)

    def _send(self, alert: Alert, resolve: bool) -> None:
        try:
            if resolve:
                self.alerter().resolve(alert)
            else:
                self.alerter().fire(alert)
        except ActionError as exc:
            log.warning("engine alert not delivered", extra={"fields": {"error": self.redact(str(exc))}})
