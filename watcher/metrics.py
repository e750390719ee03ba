"""The watcher's ``/metrics``: counters that only go up, gauges for what is current.

Counters count events as they happen -- a finding when the decision thread receives it, an incident
when the journal opens or ends it, an action when its outcome is journalled -- so within a process
they never go down and ``rate()``/``increase()`` mean what they say. (Counts of journal rows grouped
by their current status, which this replaces, went down as incidents moved from running to
resolved.) Gauges are read at scrape time from the part that owns the state: open incidents from
the journal, active findings and runway ETAs from the engine, weights from the load balancer,
paused/dry-run from the policy. The names are a contract shared with the dashboard
(deploy/grafana) and the status page; see the README's metrics list.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from watcher import __version__
from watcher.journal import OPEN_STATES, IncidentState, JournalListener, StepStatus
from watcher.model import Finding, Predicts
from watcher.playbook.registry import REGISTRY

if TYPE_CHECKING:
    from watcher.detectors.base import Detector
    from watcher.detectors.forecast import RunwayDetector
    from watcher.service import Service


def _runway_detectors(detectors: list[Detector]) -> list[RunwayDetector]:
    """The forecast detectors among these, without importing the forecast module (and numpy) into
    a watcher whose packs have no forecast rule (issue #18): while the module is not imported no
    detector can be one of its instances."""
    if "watcher.detectors.forecast" not in sys.modules:
        return []
    from watcher.detectors.forecast import RunwayDetector

    return [d for d in detectors if isinstance(d, RunwayDetector)]


ETA_BUCKETS = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class WatcherMetrics(JournalListener):
    """The service's own registry: event counters, the histograms, the scrape-time collector and
    the default process/platform/GC collectors (on this registry, not the library's global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.findings = Counter(
            "watcher_findings",
            "Findings as they fired (resolutions not counted), by rule, prediction and replica",
            ["rule", "predicts", "target", "service"],
            registry=r,
        )
        self.incidents_opened = Counter(
            "watcher_incidents_opened",
            "Incidents opened (dry runs included), by prediction and replica",
            ["predicts", "target", "service"],
            registry=r,
        )
        self.incidents_ended = Counter(
            "watcher_incidents_ended", "Incidents that reached a closed state, by that state", ["state"], registry=r
        )
        self.actions = Counter(
            "watcher_actions", "Playbook step outcomes as journalled", ["step", "outcome"], registry=r
        )
        self.finding_eta = Histogram(
            "watcher_finding_eta_seconds",
            "The time to failure a finding predicted when it fired (the lead time it announced)",
            ["predicts"],
            buckets=ETA_BUCKETS,
            registry=r,
        )
        self.lead = Histogram(
            "watcher_lead_time_seconds",
            "Seconds from the first predictive finding to the failure it announced",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.update = Histogram(
            "watcher_detector_update_seconds",
            "Engine time per signal batch (parse, match, detectors, rule state)",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
            registry=r,
        )
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def watch(self, service: Service) -> None:
        """Register the scrape-time collector over the assembled service and listen to its journal."""
        service.journal.listeners.append(self)
        self.registry.register(_LiveCollector(service))
        self.initialise()

    def initialise(self) -> None:
        """Every step x outcome, closed state and prediction at 0 from the start: a series that appears
        at its first event hides that event from ``increase()``/``changes()`` (the action annotations)."""
        for step in REGISTRY.kinds():
            for outcome in (StepStatus.DONE, StepStatus.FAILED, StepStatus.SKIPPED):
                self.actions.labels(step, outcome.value)
        for state in IncidentState:
            if state not in OPEN_STATES:
                self.incidents_ended.labels(state.value)
        for predicts in Predicts:
            self.finding_eta.labels(predicts.value)

    # -- events --------------------------------------------------------------------------------
    def finding(self, finding: Finding) -> None:
        """A finding as the decision thread receives it; a resolution is not a new finding."""
        if finding.resolved:
            return
        target = finding.target
        self.findings.labels(finding.rule_id, finding.predicts.value, target.key, target.service or "").inc()
        if finding.eta_s is not None and math.isfinite(finding.eta_s):
            self.finding_eta.labels(finding.predicts.value).observe(finding.eta_s)

    def incident_opened(self, finding: Finding, state: IncidentState) -> None:
        target = finding.target
        self.incidents_opened.labels(finding.predicts.value, target.key, target.service or "").inc()

    def incident_ended(self, state: IncidentState) -> None:
        self.incidents_ended.labels(state.value).inc()

    def step_outcome(self, step: str, status: StepStatus) -> None:
        self.actions.labels(step, status.value).inc()


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class _LiveCollector(Collector):
    """What is read at scrape time: the engine's and queue's running counts, and every gauge."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterable[Any]:
        s = self.service
        yield from self._engine_counts(s)
        yield from self._state(s)
        yield from self._store_and_alerts(s)
        build = _gauge("watcher_build_info", "Always 1: the running version", ["version", "python_version"])
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield build

    @staticmethod
    def _engine_counts(s: Service) -> Iterable[Any]:
        stats = s.live.engine.stats  # carried over a rule reload, so these only go up
        lines = CounterMetricFamily("watcher_lines", "Log lines processed")
        lines.add_metric([], stats.lines)
        samples = CounterMetricFamily("watcher_samples", "Series samples processed")
        samples.add_metric([], stats.samples)
        events = CounterMetricFamily("watcher_lifecycle_events", "Docker lifecycle events processed")
        events.add_metric([], stats.lifecycle_events)
        dropped = CounterMetricFamily("watcher_dropped_signals", "Signals dropped by a full queue", labels=["source"])
        counts = dict.fromkeys((src.name for src in s.live.sources), 0) | dict(s.live.queue.dropped)
        for source, n in sorted(counts.items()):
            dropped.add_metric([source], n)
        depth = _gauge("watcher_queue_depth", "Signals waiting for the engine")
        depth.add_metric([], s.live.queue.depth)
        connected = _gauge("watcher_source_connected", "1 when a source is connected", ["source"])
        for src in s.live.sources:
            connected.add_metric([src.name], 1.0 if src.connected else 0.0)
        yield from (lines, samples, events, dropped, depth, connected)

    @staticmethod
    def _state(s: Service) -> Iterable[Any]:
        engine = s.live.engine
        now = time.time()
        open_ = _gauge("watcher_incidents_open", "Incidents running; replicas held drained", ["state"])
        for state, n in s.journal.open_counts().items():
            open_.add_metric([state], n)
        active: dict[str, int] = dict.fromkeys(list(engine.targets), 0)
        for entry in engine.states.firing():
            active[entry.target_key] = active.get(entry.target_key, 0) + 1
        findings = _gauge("watcher_findings_active", "Rules firing now, per replica", ["target"])
        for key, n in sorted(active.items()):
            findings.add_metric([key], n)
        etas: dict[str, float] = {}
        for detector in _runway_detectors(list(engine.detectors.values())):
            for key, eta in detector.etas(now).items():
                etas[key] = min(eta, etas.get(key, math.inf))
        runway = _gauge(
            "watcher_runway_eta_seconds",
            "Forecast seconds until the replica's series reaches its limit (nearest rule; +Inf: not rising)",
            ["target"],
        )
        for key, eta in sorted(etas.items()):
            runway.add_metric([key], eta)
        weight = _gauge("watcher_replica_weight", "The replica's load-balancer weight now (0: drained)", ["target"])
        for container in s.fleet.inventory.snapshot().current():
            # the status page's reading (None when the LB does not answer: a scrape still answers)
            live = s.replica_state(container.key)["weight"]
            if live is not None:
                weight.add_metric([container.key], live)
        paused = _gauge("watcher_paused", "1 while actions are paused")
        paused.add_metric([], 1.0 if s.policy.paused else 0.0)
        dry = _gauge("watcher_dry_run", "1 while the watcher only plans")
        dry.add_metric([], 1.0 if s.policy.config.dry_run else 0.0)
        yield from (open_, findings, runway, weight, paused, dry)

    @staticmethod
    def _store_and_alerts(s: Service) -> Iterable[Any]:
        store = s.store.health()
        store_errors = CounterMetricFamily("watcher_store_write_errors", "Failed store writes (disk full, read-only)")
        store_errors.add_metric([], store["write_errors"])
        store_ok = _gauge("watcher_store_writable", "1 while the latest store write succeeded")
        store_ok.add_metric([], 1.0 if store["write_ok"] else 0.0)
        queued = _gauge("watcher_alerts_queued", "Alerts waiting for their receiver", ["sink"])
        alerts_dropped = CounterMetricFamily(
            "watcher_alerts_dropped",
            "Queued alerts dropped: the queue was full, or the receiver refused",
            labels=["sink", "why"],
        )
        delivered = CounterMetricFamily("watcher_alerts_delivered", "Alerts delivered from the queue", labels=["sink"])
        for outbox in s.outboxes:
            q = outbox.stats()
            queued.add_metric([outbox.name], q["queued"])
            alerts_dropped.add_metric([outbox.name, "full"], q["dropped"])
            alerts_dropped.add_metric([outbox.name, "refused"], q["refused"])
            delivered.add_metric([outbox.name], q["delivered"])
        yield from (store_errors, store_ok, queued, alerts_dropped, delivered)


__all__ = ["ETA_BUCKETS", "WatcherMetrics"]
