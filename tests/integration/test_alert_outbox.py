"""Alertmanager down: the watcher's alerts are queued in its store and delivered, in order and once,
when Alertmanager is back, even by the next watcher process (issue #14, chaos: Alertmanager down).

Real Alertmanager on loopback (testbed.services); the watcher is the product's Service built from
settings, with a Docker client that never connects (no Docker needed), and its alerts fired
through the paths the product fires them: the heartbeat, a guard-rail escalation, and a resolve.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import pytest

from testbed.ports import free_port
from testbed.services import Alertmanager
from watcher.actions.base import Alert, Alerter
from watcher.config import Settings
from watcher.rulepack.compile import compile_packs
from watcher.rules import SHIPPED_RULES
from watcher.service import Service

pytestmark = pytest.mark.integration


def _service(tmp_path: Path, am_url: str) -> Service:
    settings = Settings(
        store=tmp_path / "watcher.db",
        engines={"local": "tcp://127.0.0.1:9"},
        api_listen=f"127.0.0.1:{free_port()}",
        alertmanager_url=am_url,
    )
    return Service(settings, compile_packs([SHIPPED_RULES]))


def _names(alerts: list[dict[str, Any]]) -> Counter[str]:
    return Counter(a["labels"]["alertname"] + "/" + a["labels"].get("reason", "") for a in alerts)


def test_alerts_queued_while_alertmanager_is_down_arrive_in_order_after_a_watcher_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker, "DockerClient", functools.partial(docker.DockerClient, version="1.43"))
    am = Alertmanager(tmp_path / "am", free_port()).start()
    first = _service(tmp_path, am.url)
    try:
        (box,) = first.outboxes
        box.start()
        gone = Alert.build("ServingWatcherGone", None, severity="warning", starts_at=time.time())
        first.alerter.fire(gone)
        assert box.flush(10.0)
        assert "ServingWatcherGone/" in _names(am.alerts())  # delivered while Alertmanager is up

        am.stop()  # by its own PID
        first._heartbeat(time.time())
        first.executor.alerts.escalate("local/tfs-1", "refused: restart budget spent (3 in 1h)", "tfs-oom")
        first.alerter.resolve(gone)  # ended now: must not come back as firing
        first.executor.alerts.escalate("local/tfs-2", "refused: breaker open (2 failures)", "tfs-oom")
        first.alerter.fire(gone)  # a repeat of the escalation above would be coalesced; this one is after a resolve
        first.alerter.resolve(gone)
        deadline = time.monotonic() + 10
        while box.stats()["failing_since"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        status = first.status()["alert_queues"]["alertmanager"]
        assert status["queued"] == 6 and status["failing_since"] is not None and status["last_error"]
    finally:
        box.stop()  # the watcher stops with its alerts still queued
        first.api.stop()
        first.store.close()

    second = _service(tmp_path, am.url)  # the next watcher on the same store
    try:
        (box,) = second.outboxes
        assert box.stats()["queued"] == 6
        box.start()
        am.start()  # same port, same data dir
        back = time.monotonic()
        assert box.flush(30.0), box.stats()
        delivered_s = time.monotonic() - back
        alerts = am.alerts()
        names = _names(alerts)
        # the heartbeat and both escalations once each; the resolved alert is not active
        assert names == Counter(
            {
                "ServingWatcherWatchdog/": 1,
                "ServingWatcherEscalation/restart budget spent": 1,
                "ServingWatcherEscalation/breaker open": 1,
            }
        ), names
        by_name = {a["labels"]["alertname"] + "/" + a["labels"].get("reason", ""): a for a in alerts}
        arrived = [
            by_name[n]["updatedAt"]
            for n in (
                "ServingWatcherWatchdog/",
                "ServingWatcherEscalation/restart budget spent",
                "ServingWatcherEscalation/breaker open",
            )
        ]
        assert arrived == sorted(arrived), arrived  # in the order they were queued
        assert delivered_s < 20.0
        assert second.status()["alert_queues"]["alertmanager"]["delivered"] == 6
    finally:
        box.stop()
        second.api.stop()
        second.store.close()
        am.stop()


def test_the_service_links_incident_alerts_to_its_own_incidents_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generatorURL = <the API's address>/incidents/<id>, and that URL answers with the incident."""
    import requests

    from watcher.model import Finding, Predicts, Target
    from watcher.playbook.notify import SendAlert
    from watcher.playbook.plan import Plan

    monkeypatch.setattr(docker, "DockerClient", functools.partial(docker.DockerClient, version="1.43"))
    am = Alertmanager(tmp_path / "am", free_port()).start()
    service = _service(tmp_path, am.url)
    try:
        service.api.start()
        (box,) = service.outboxes
        box.start()
        found = Finding(Target("tfs-1", service="m"), "tfs-oom", Predicts.OOM, time.time(), eta_s=42.0)
        incident_id = service.journal.open_incident(found, Plan([SendAlert()]), time.time())
        incident = service.journal.incident(incident_id)
        assert incident is not None
        service.executor.alerts.incident(incident, "warning")
        assert box.flush(10.0)
        (alert,) = [a for a in am.alerts() if a["labels"]["alertname"] == "ServingWatcher"]
        assert alert["generatorURL"] == f"http://127.0.0.1:{service.api.port}/incidents/{incident_id}"
        assert (
            alert["labels"]["replica"] == "tfs-1" and alert["annotations"]["summary"] == "tfs-1: oom predicted in 42s"
        )
        answer = requests.get(alert["generatorURL"], timeout=5)
        assert answer.status_code == 200
        doc = answer.json()
        assert doc["id"] == incident_id and doc["state"] == "running" and doc["alert"]["labels"]["replica"] == "tfs-1"
        assert requests.get(f"http://127.0.0.1:{service.api.port}/incidents/999", timeout=5).status_code == 404
    finally:
        box.stop()
        service.api.stop()
        service.store.close()
        am.stop()


def test_the_store_replaced_alert_stays_active_while_actions_stay_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Critical and sent once, it used to lapse after resolve_timeout while nobody had looked; now it
    is re-sent every alert_resend_s until actions are resumed, then resolved."""
    monkeypatch.setattr(docker, "DockerClient", functools.partial(docker.DockerClient, version="1.43"))
    service = _service(tmp_path, "http://127.0.0.1:9")
    calls: list[tuple[str, float | None]] = []

    class Recording(Alerter):
        def fire(self, alert: Alert) -> None:
            calls.append(("fire", alert.ends_at))

        def resolve(self, alert: Alert) -> None:
            calls.append(("resolve", alert.ends_at))

    try:
        service.alerter = Recording()
        service.policy.set_paused(True, time.time())  # as a replaced store leaves it
        service._alert_store_replaced("watcher.db.corrupt-1")
        now = time.time()
        service._keep_replaced_alert(now + 1)  # inside the re-send period
        service._keep_replaced_alert(now + service.settings.alert_resend_s + 1)
        assert calls == [("fire", None), ("fire", None)]
        service.policy.set_paused(False, now)  # POST /resume
        service._keep_replaced_alert(now + 2 * service.settings.alert_resend_s)
        service._keep_replaced_alert(now + 4 * service.settings.alert_resend_s)
        assert [k for k, _ in calls] == ["fire", "fire", "resolve"] and calls[-1][1] is not None
    finally:
        service.api.stop()
        service.store.close()


def test_the_blind_spot_alert_is_resent_while_prometheus_stays_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent once it would lapse after one TTL while the watcher is still blind; resolved with now."""
    import types

    monkeypatch.setattr(docker, "DockerClient", functools.partial(docker.DockerClient, version="1.43"))
    service = _service(tmp_path, "http://127.0.0.1:9")
    calls: list[tuple[str, float | None]] = []

    class Recording(Alerter):
        def fire(self, alert: Alert) -> None:
            calls.append(("fire", alert.ends_at))

        def resolve(self, alert: Alert) -> None:
            calls.append(("resolve", alert.ends_at))

    try:
        service.alerter = Recording()
        now = time.time()
        source = types.SimpleNamespace(unreachable_since=now - 100, url="http://127.0.0.1:9")
        service.live.prometheus = source  # type: ignore[assignment]
        period = service.settings.alert_resend_s
        for t in (now, now + 1, now + period + 1, now + 2 * period + 2):
            service._check_blind(t)
        assert calls == [("fire", None)] * 3
        source.unreachable_since = None  # a query answered
        service._check_blind(now + 2 * period + 3)
        assert calls[-1] == ("resolve", now + 2 * period + 3)
    finally:
        service.api.stop()
        service.store.close()
