"""Alert payloads, dedup, and retries against a real (tiny, loopback) HTTP server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.conftest import Receiver
from watcher.actions.alerts import AlertmanagerAlerter, WebhookAlerter, alertmanager_payload
from watcher.actions.base import ActionError, Alert
from watcher.model import Target
from watcher.retry import Backoff
from watcher.timefmt import format_rfc3339

TARGET = Target("tfsim-0", engine="local", service="half_plus_two")


def alert(**labels: str) -> Alert:
    return Alert.build(
        "ReplicaDrained",
        TARGET,
        severity="critical",
        labels=labels,
        annotations={"summary": "s"},
        starts_at=1714557600.5,
    )


def no_sleep(waits: list[float]) -> Any:
    return waits.append


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert format_rfc3339(1714557600.5) == "2024-05-01T10:00:00.500Z"


def test_payload_shape() -> None:
    a = alert(rule="oom-precursor")
    body = alertmanager_payload(a)
    assert body["labels"] == {
        "alertname": "ReplicaDrained",
        "severity": "critical",
        "target": "local/tfsim-0",
        "container": "tfsim-0",
        "engine": "local",
        "service": "half_plus_two",
        "replica": "tfsim-0",  # the label the Prometheus series carry: one inhibit rule covers both
        "rule": "oom-precursor",
    }
    assert body["annotations"] == {"summary": "s"}
    assert body["startsAt"] == "2024-05-01T10:00:00.500Z"
    # firing: active for a TTL from delivery (not start + resolve_timeout, which expires a long incident)
    assert alertmanager_payload(a, now=1714560000.0, firing_ttl_s=90)["endsAt"] == "2024-05-01T10:41:30.000Z"
    assert alertmanager_payload(a, ends_at=1714557660.0)["endsAt"] == "2024-05-01T10:01:00.000Z"
    assert a.fingerprint == alert(rule="oom-precursor").fingerprint != alert(rule="other").fingerprint
    plain = Alert("X", {"target": "local/a"})  # built directly: still gets a distinct fingerprint
    assert plain.fingerprint and plain.fingerprint != Alert("X", {"target": "local/b"}).fingerprint


def test_fire_dedups_within_window_and_resolve_is_always_sent(receiver: Receiver) -> None:
    now = [1000.0]
    am = AlertmanagerAlerter(receiver.url, dedup_window_s=60, clock=lambda: now[0])
    a = alert()
    am.fire(a)
    am.fire(a)
    now[0] += 30
    am.fire(a)
    assert len(receiver.requests) == 1
    path, _headers, _raw = receiver.requests[0]
    body = receiver.bodies()[0]
    assert path == "/api/v2/alerts" and isinstance(body, list) and body[0]["labels"]["alertname"] == "ReplicaDrained"
    am.resolve(a)
    assert receiver.bodies()[-1][0]["endsAt"] == format_rfc3339(1030.0)
    am.fire(a)  # after a resolve, the same alert fires again
    now[0] += 61
    am.fire(a)  # and outside the window it is re-sent (keeps Alertmanager from expiring it)
    assert len(receiver.requests) == 4


def test_retries_with_backoff_then_succeeds(receiver: Receiver) -> None:
    receiver.statuses = [503, 500]
    waits: list[float] = []
    am = AlertmanagerAlerter(receiver.url, backoff=Backoff(attempts=4, base_s=0.5, cap_s=8), sleep=waits.append)
    am.fire(alert())
    assert len(receiver.requests) == 3
    assert waits == [0.5, 1.0]
    assert am.sent_count == 1


def test_gives_up_after_bounded_attempts_and_allows_a_later_retry(receiver: Receiver) -> None:
    receiver.statuses = [500, 500, 500]
    waits: list[float] = []
    am = AlertmanagerAlerter(receiver.url, backoff=Backoff(attempts=3, base_s=0.1, cap_s=0.15), sleep=waits.append)
    with pytest.raises(ActionError, match=r"gave up after 3 attempts; last error: HTTP 500"):
        am.fire(alert())
    assert waits == [0.1, 0.15]
    am.fire(alert())  # the failed fire did not count for dedup
    assert len(receiver.requests) == 4


def test_client_errors_are_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400]
    am = AlertmanagerAlerter(receiver.url, sleep=lambda _: None)
    with pytest.raises(ActionError, match="HTTP 400"):
        am.fire(alert())
    assert len(receiver.requests) == 1


def test_connection_refused_is_retried() -> None:
    waits: list[float] = []
    r = Receiver()
    url = r.url
    r.server.server_close()  # nothing listens there any more
    am = AlertmanagerAlerter(url, backoff=Backoff(attempts=2, base_s=0.01), sleep=waits.append, timeout_s=1)
    with pytest.raises(ActionError, match="ConnectionError"):
        am.fire(alert())
    assert waits == [0.01]


def test_webhook_sends_token_but_never_shows_it(receiver: Receiver) -> None:
    receiver.statuses = [502]
    secret = "s3cr3t-token"
    hook = WebhookAlerter(receiver.url + "/hooks/T000/B000/XXXX", token=secret, sleep=lambda _: None)
    assert secret not in repr(hook) and "XXXX" not in repr(hook)
    hook.fire(alert())
    _path, headers, _raw = receiver.requests[-1]
    body = receiver.bodies()[-1]
    assert headers["Authorization"] == f"Bearer {secret}"
    assert body["status"] == "firing" and body["alerts"][0]["fingerprint"] == alert().fingerprint
    hook.resolve(alert())
    assert receiver.bodies()[-1]["status"] == "resolved"
    receiver.statuses = [401]
    with pytest.raises(ActionError) as info:
        hook.fire(alert(other="x"))
    assert secret not in str(info.value) and "XXXX" not in str(info.value)


def test_the_dedup_memory_forgets_expired_fingerprints_so_a_long_run_stays_bounded(receiver: Receiver) -> None:
    now = [1000.0]
    am = AlertmanagerAlerter(receiver.url, dedup_window_s=60, clock=lambda: now[0])
    for i in range(3000):  # every incident is its own fingerprint
        am.fire(alert(incident=str(i)))
        now[0] += 1.0
    assert len(receiver.requests) == 3000
    assert len(am._sent) <= 1001 + 60
    recent = alert(incident="2999")
    am.fire(recent)  # still within its window: deduplicated
    assert len(receiver.requests) == 3000
