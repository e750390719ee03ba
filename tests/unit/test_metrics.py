"""The watcher's counters count events once, as they happen, and never go down."""

from __future__ import annotations

import time
from pathlib import Path

from tests.unit.test_executor import TARGETS, make, slow, wait_until
from watcher.journal import IncidentState
from watcher.metrics import WatcherMetrics
from watcher.model import Finding, Predicts, Target


def value(metrics: WatcherMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_finding_counts_once_with_its_replica_and_its_eta_and_a_resolution_not_at_all() -> None:
    metrics = WatcherMetrics()
    target = Target("tfs-1", service="m")
    firing = Finding(target=target, rule_id="memory-runway", predicts=Predicts.OOM, ts=time.time(), eta_s=42.0)
    metrics.finding(firing)
    metrics.finding(Finding(target=target, rule_id="memory-runway", predicts=Predicts.OOM, ts=1.0, resolved=True))
    labels = {"rule": "memory-runway", "predicts": "oom", "target": "local/tfs-1", "service": "m"}
    assert value(metrics, "watcher_findings_total", **labels) == 1.0
    assert value(metrics, "watcher_finding_eta_seconds_count", predicts="oom") == 1.0
    assert value(metrics, "watcher_finding_eta_seconds_bucket", predicts="oom", le="60.0") == 1.0
    assert value(metrics, "watcher_finding_eta_seconds_bucket", predicts="oom", le="30.0") == 0.0


def test_an_incident_counts_opened_and_ended_once_and_its_actions_once_each(tmp_path: Path) -> None:
    executor, shifter, _alerts, journal = make(tmp_path)
    metrics = WatcherMetrics()
    journal.listeners.append(metrics)
    target = TARGETS[1]
    incident = executor.on_finding(slow(target))
    assert incident is not None
    opened = {"predicts": "latency", "target": target.key, "service": "m"}
    assert value(metrics, "watcher_incidents_opened_total", **opened) == 1.0
    assert journal.open_counts()["running"] == 1
    wait_until(lambda: shifter.weights.get(target.key) == 0)
    # the shifter is called before the step's outcome is journalled: wait for the journal, not the weight
    wait_until(lambda: value(metrics, "watcher_actions_total", step="weight", outcome="done") >= 1.0)
    assert value(metrics, "watcher_actions_total", step="weight", outcome="done") == 1.0
    executor.on_finding(slow(target, resolved=True))
    executor.wait(5)
    found = journal.incident(incident)
    assert found is not None and found.state is IncidentState.RESOLVED
    # the counters keep what happened after the incident closed (a count of running rows went to 0)
    assert value(metrics, "watcher_incidents_opened_total", **opened) == 1.0
    assert value(metrics, "watcher_incidents_ended_total", state="resolved") == 1.0
    steps = [(s.name, s.status.value) for s in found.steps]
    for name, status in set(steps):
        assert value(metrics, "watcher_actions_total", step=name, outcome=status) == steps.count((name, status))
    assert journal.open_counts()["running"] == 0


def test_a_dry_run_incident_is_opened_and_ended_at_once(tmp_path: Path) -> None:
    executor, _shifter, _alerts, journal = make(tmp_path)
    executor.policy.set_dry_run(True, time.time())
    metrics = WatcherMetrics()
    journal.listeners.append(metrics)
    assert executor.on_finding(slow(TARGETS[0])) is not None
    assert value(metrics, "watcher_incidents_opened_total", predicts="latency", target=TARGETS[0].key, service="m") == 1
    assert value(metrics, "watcher_incidents_ended_total", state="dry_run") == 1.0
    assert value(metrics, "watcher_actions_total", step="weight", outcome="done") == 0.0


def test_the_registry_carries_the_process_and_python_collectors() -> None:
    names = {m.name for m in WatcherMetrics().registry.collect()}
    assert {"process_resident_memory_bytes", "python_info", "python_gc_collections"} <= names
