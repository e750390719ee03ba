"""Remediation on the live testbed: the playbook prevents client-visible failures, and the guard
rails hold, with the real engine, Nginx, Docker and Alertmanager."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from testbed.events import EventRecorder
from testbed.harness import HarnessSpec, Watcher, write_spec
from testbed.loadgen import LoadGenerator
from testbed.stack import MODELS_DIR, Testbed, TestbedConfig
from watcher.journal import IncidentState
from watcher.model import Finding, Predicts

pytestmark = pytest.mark.integration

SMOKE = json.loads((MODELS_DIR / "half_plus_two" / "2" / "smoke.json").read_text())


def load(bed: Testbed, seconds: float, rate: float = 20.0) -> LoadGenerator:
    return LoadGenerator(
        bed.url,
        "half_plus_two",
        rate_per_s=rate,
        duration_s=seconds,
        timeout_s=5.0,
        instances=SMOKE["instances"],
        expected={"2": SMOKE["predictions"]},
    ).start()


@pytest.fixture
def bed(docker_client: docker.DockerClient) -> Iterator[Testbed]:
    with Testbed(TestbedConfig(replicas=3, weights=(3, 2, 1), memory_limit="160m")) as bed:
        yield bed


def wait_incident(w: Watcher, predicate: object, timeout_s: float) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for incident in w.journal.incidents():
            if predicate(incident):  # type: ignore[operator]
                return incident
        time.sleep(0.2)
    raise TimeoutError([i.to_json() for i in w.journal.incidents()])


def test_leak_is_drained_restarted_verified_restored_without_a_failed_request(bed: Testbed, tmp_path: Path) -> None:
    sick = bed.replicas[1]
    events = EventRecorder(bed.client, bed.run_id).start()
    with Watcher(HarnessSpec.for_testbed(bed, tmp_path / "w.db")) as w:
        gen = load(bed, seconds=75)
        time.sleep(3)
        sick.set_faults({"leak": {"mb_per_s": 3}})
        incident = wait_incident(
            w, lambda i: i.target.endswith(sick.name) and i.state is not IncidentState.RUNNING, timeout_s=70
        )
        result = gen.result(timeout_s=90)
    events.stop()
    doc = incident.to_json()  # type: ignore[attr-defined]
    print(json.dumps(doc, indent=1))
    print(f"client: {result.requests} requests, {result.failed} failed, statuses {result.status_counts}")
    assert doc["state"] == "resolved", doc
    assert [s["name"] for s in doc["steps"]] == ["drain", "wait_idle", "restart", "wait_available", "verify", "restore"]
    assert not events.events(sick.name, "oom"), "the replica was OOM-killed: the watcher came too late"
    assert result.failed == 0, result.status_counts
    assert result.requests >= 1400


def test_stale_version_is_held_drained_and_alerted(bed: Testbed, tmp_path: Path) -> None:
    stale = bed.replicas[2]
    with Watcher(HarnessSpec.for_testbed(bed, tmp_path / "w.db")) as w:
        stale.set_faults({"stale_on_restart": {"version": 1}})
        stale.set_faults({"crash": {"after_s": 0.5}})  # Docker brings it back... serving version 1
        incident = wait_incident(
            w, lambda i: i.target.endswith(stale.name) and i.state is not IncidentState.RUNNING, timeout_s=60
        )
        doc = incident.to_json()  # type: ignore[attr-defined]
        assert doc["state"] == "held", doc
        assert "version mismatch: serving 1, expected 2" in doc["note"]
        replica = w.fleet.replica(f"local/{stale.name}")
        assert replica is not None and w.shifter.get_weight(replica) == 0  # kept drained
        assert bed.alertmanager is not None
        deadline = time.monotonic() + 15
        alerts: list[dict[str, object]] = []
        while time.monotonic() < deadline and not alerts:
            alerts = [
                a
                for a in bed.alertmanager.alerts()
                if a["labels"].get("alertname") == "ServingWatcher" and stale.name in a["labels"].get("target", "")
            ]
            time.sleep(0.3)
        assert alerts, bed.alertmanager.alerts()


def test_two_of_three_failing_never_drains_the_last_healthy_one(bed: Testbed, tmp_path: Path) -> None:
    r0, r1, r2 = bed.replicas
    weights_of_r2: list[int] = []
    stop = threading.Event()
    with Watcher(HarnessSpec.for_testbed(bed, tmp_path / "w.db")) as w:
        replica2 = w.fleet.replica(f"local/{r2.name}")
        assert replica2 is not None

        def watch_r2() -> None:
            while not stop.is_set():
                weights_of_r2.append(w.shifter.get_weight(replica2))
                time.sleep(0.1)

        t = threading.Thread(target=watch_r2, daemon=True)
        t.start()
        for r in (r0, r1):
            r.set_faults({"error_ramp": {"start": 1.0, "end": 1.0, "over_s": 1}})
        gen = load(bed, seconds=20)
        gen.result(timeout_s=40)
        time.sleep(2)
        stop.set()
        t.join()
        refusals = [why for _target, _rule, why in w.executor.refusals]
    assert weights_of_r2 and min(weights_of_r2) > 0, "the last healthy replica was drained"
    assert any("unavailable" in why or "serving replica" in why for why in refusals), refusals


def test_restart_loop_backs_off_then_trips_the_breaker_and_alerts_once(bed: Testbed, tmp_path: Path) -> None:
    r0 = bed.replicas[0]
    spec = HarnessSpec.for_testbed(
        bed,
        tmp_path / "w.db",
        guard={"backoff_base_s": 15.0, "fresh_s": 30.0},
        defaults={"cooldown": 0, "max_restarts": {"count": 2, "per": 3600}},
    )
    with Watcher(spec) as w:
        target = w.fleet.replica(f"local/{r0.name}")
        assert target is not None
        outcomes: list[str] = []
        deadline = time.monotonic() + 120
        while outcomes.count("circuit breaker open") < 2 and time.monotonic() < deadline:
            f = Finding(target.target, "docker-die-crash", Predicts.CRASH, ts=time.time())
            iid = w.executor.on_finding(f)
            outcomes.append("acted" if iid else w.executor.refusals[-1][2].split(":")[0])
            w.wait(120)
            time.sleep(1.0)
        restarts = [i for i in w.journal.incidents() if any(s.name == "restart" for s in i.steps)]
        assert len(restarts) == 2, outcomes
        assert "backing off" in outcomes and "circuit breaker open" in outcomes, outcomes
        assert bed.alertmanager is not None
        time.sleep(2)
        escalations = [
            a for a in bed.alertmanager.alerts() if a["labels"].get("alertname") == "ServingWatcherEscalation"
        ]
        assert len(escalations) == 1, escalations
        assert "breaker" in escalations[0]["annotations"]["summary"]


def test_sigkilled_watcher_finishes_the_playbook_after_restart(bed: Testbed, tmp_path: Path) -> None:
    sick = bed.replicas[0]
    spec = HarnessSpec.for_testbed(bed, tmp_path / "w.db")
    spec_file = write_spec(spec, tmp_path / "spec.json")
    proc = subprocess.Popen([sys.executable, "-m", "testbed.harness", str(spec_file)], stdout=subprocess.PIPE)
    events = EventRecorder(bed.client, bed.run_id).start()
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"watching"
        sick.set_faults({"error_ramp": {"start": 1.0, "end": 1.0, "over_s": 1}})
        gen = load(bed, seconds=8)
        from watcher.journal import Journal
        from watcher.store import Store

        journal = Journal(Store(tmp_path / "w.db"))
        deadline = time.monotonic() + 40
        drained = False
        while time.monotonic() < deadline and not drained:
            for incident in journal.incidents():
                drained = any(s.name in ("drain", "weight") and s.status.value == "done" for s in incident.steps)
            time.sleep(0.05)
        assert drained, [i.to_json() for i in journal.incidents()]
        os.kill(proc.pid, signal.SIGKILL)  # right after the drain
        proc.wait(timeout=10)
        gen.result(timeout_s=30)
        sick.clear_faults()
        [incident] = journal.incidents(open_only=True)  # left running by the dead watcher
        with Watcher(spec) as w:  # a new watcher on the same store resumes it
            w.wait(120)
            done = w.journal.incident(incident.id)
            assert done is not None
            replica = w.fleet.replica(incident.target)
            assert replica is not None
            weight = w.shifter.get_weight(replica)
            original = w.shifter.original_weight(replica)
        assert done.state in (IncidentState.RESOLVED, IncidentState.HELD), done.to_json()
        if done.state is IncidentState.RESOLVED:
            assert weight == original  # nothing left drained and forgotten
        else:
            assert weight == 0  # held on purpose, and alerted
    finally:
        events.stop()
        if proc.poll() is None:
            proc.kill()
    restarts = [e for e in events.events(sick.name) if e.action == "restart"]
    assert len(restarts) <= 1  # never restarted twice


def test_dry_run_changes_nothing_outside_the_journal(bed: Testbed, tmp_path: Path) -> None:
    assert bed.nginx is not None
    before = bed.nginx.upstreams_conf_path.read_bytes()
    r0 = bed.replicas[0]
    events = EventRecorder(bed.client, bed.run_id).start()
    with Watcher(HarnessSpec.for_testbed(bed, tmp_path / "w.db", dry_run=True)) as w:
        r0.set_faults({"error_ramp": {"start": 1.0, "end": 1.0, "over_s": 1}})
        load(bed, seconds=6).result(timeout_s=20)
        incident = wait_incident(w, lambda i: i.dry_run, timeout_s=20)
    events.stop()
    assert incident.state is IncidentState.DRY_RUN and incident.steps == []  # type: ignore[attr-defined]
    assert bed.nginx.upstreams_conf_path.read_bytes() == before
    assert not [e for e in events.events() if e.action in ("restart", "kill", "stop")]
