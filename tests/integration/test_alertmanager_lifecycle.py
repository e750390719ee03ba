"""An incident's alert in the real Alertmanager, with the shipped alertmanager.yml: active with the
labels, annotations and generatorURL the watcher builds, kept active past the end the previous
delivery gave it (each re-send moves ``endsAt`` on), and resolved when the incident ends.

The real executor, outbox and Alertmanager alerter, delivering to a real Alertmanager on loopback;
the load balancer and Docker are the in-memory fakes of tests/unit/test_executor.py (no Docker
needed). A re-send period of 1 s stands in for the default 60 s, so this takes seconds, not minutes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.ports import free_port
from testbed.services import Alertmanager
from tests.unit.playbook.test_alert_lifecycle import PACK, URL, finding
from tests.unit.test_executor import TARGETS, FakeFleet, FakeShifter, FakeVerifier, NoDocker
from watcher.actions.alerts import AlertmanagerAlerter
from watcher.actions.base import Alert
from watcher.actions.outbox import AlertOutbox
from watcher.journal import Journal
from watcher.model import Predicts
from watcher.playbook.executor import Executor, ExecutorConfig
from watcher.policy import GuardConfig, Policy
from watcher.retry import Backoff
from watcher.rulepack.compile import load_packs
from watcher.store import Store
from watcher.timefmt import parse_rfc3339

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RESEND_S = 1.0


class ShippedAlertmanager(Alertmanager):
    """The testbed's Alertmanager process with deploy/alertmanager/alertmanager.yml as its config."""

    def write_config(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "deploy" / "alertmanager" / "alertmanager.yml", self.config_path)


@pytest.fixture
def am(tmp_path: Path) -> Iterator[Alertmanager]:
    manager = ShippedAlertmanager(tmp_path / "am", free_port()).start()
    try:
        yield manager
    finally:
        manager.stop()  # by its own PID


def _ours(am: Alertmanager, **labels: str) -> list[dict[str, Any]]:
    return [a for a in am.alerts(active_only=False) if all(a["labels"].get(k) == v for k, v in labels.items())]


def test_an_incident_alert_is_active_in_alertmanager_until_the_incident_ends(tmp_path: Path, am: Alertmanager) -> None:
    (tmp_path / "p.yaml").write_text(PACK)
    [pack] = load_packs([tmp_path / "p.yaml"])
    store = Store(tmp_path / "w.db")
    sink = AlertmanagerAlerter(
        am.url, dedup_window_s=RESEND_S / 2, firing_ttl_s=3 * RESEND_S, backoff=Backoff(base_s=0.1, attempts=2)
    )
    outbox = AlertOutbox(store, sink, "alertmanager", backoff=Backoff(base_s=0.05, cap_s=0.2))
    shifter = FakeShifter()
    journal = Journal(store)
    executor = Executor(
        Policy(store, GuardConfig()),
        journal,
        FakeFleet(shifter),  # type: ignore[arg-type]
        shifter,
        NoDocker(),
        FakeVerifier(),  # type: ignore[arg-type]
        outbox,
        {r.id: (r, pack.defaults) for r in pack.rules},
        ExecutorConfig(alert_resend_s=RESEND_S, external_url=URL),
    )
    outbox.start()
    try:
        incident_id = executor.on_finding(finding("held", Predicts.LOAD_FAILURE))
        executor.wait(5)
        assert outbox.flush(10.0)
        (alert,) = _ours(am, alertname="ServingWatcher", severity="critical", replica="tfs-1")
        assert alert["status"]["state"] == "active"
        labels = alert["labels"]
        assert labels["service"] == "m" and labels["team"] == "ml" and labels["incident"] == str(incident_id)
        notes = alert["annotations"]
        assert notes["summary"].startswith("tfs-1: replica held drained")
        assert "ETA 1m35s" in notes["description"] and "load failed: SavedModel not found" in notes["description"]
        assert notes["runbook_url"] == "https://runbooks.example/load-failure"
        assert alert["generatorURL"] == f"{URL}/incidents/{incident_id}"
        # the alert step's warning for the same incident was ended when the hold raised it to critical
        # (Alertmanager's API lists only alerts that have not ended: a resolved one is gone from it)
        assert _ours(am, alertname="ServingWatcher", severity="warning", replica="tfs-1") == []

        first_end = parse_rfc3339(alert["endsAt"])
        assert first_end <= time.time() + 3 * RESEND_S + 1  # the delivery's own TTL, not start + 5 min
        ends = [first_end]
        deadline = first_end + 2.5  # well past the end the first delivery gave it
        while time.time() < deadline:
            executor.alerts.tick(time.time())  # the service's housekeeping loop does this every second
            assert outbox.flush(5.0)
            time.sleep(0.3)
            (now_seen,) = _ours(am, alertname="ServingWatcher", severity="critical", replica="tfs-1")
            assert now_seen["status"]["state"] == "active", now_seen
            ends.append(parse_rfc3339(now_seen["endsAt"]))
        assert time.time() > first_end + 2
        assert ends[-1] > first_end + 2 and ends == sorted(ends)  # each re-send moved endsAt on

        # a critical for tfs-1 inhibits a warning for tfs-1, not one for tfs-2 (alerts carry replica)
        for target in TARGETS[1:]:
            outbox.fire(Alert.build("ReplicaWarning", target, severity="warning"))
        assert outbox.flush(5.0)
        time.sleep(0.5)  # inhibition is evaluated when the API is asked; give the alerts a moment to be stored
        (same,) = _ours(am, alertname="ReplicaWarning", replica="tfs-1")
        (other,) = _ours(am, alertname="ReplicaWarning", replica="tfs-2")
        assert same["status"]["inhibitedBy"] and not other["status"]["inhibitedBy"], (same, other)

        shifter.weights[TARGETS[1].key] = 2  # the operator releases the held replica
        executor.alerts.tick(time.time() + RESEND_S)
        assert outbox.flush(5.0)
        assert _ours(am, alertname="ServingWatcher", replica="tfs-1") == []  # resolved
        assert executor.alerts.active() == {}
    finally:
        outbox.stop()
        executor.shutdown()
        store.close()
