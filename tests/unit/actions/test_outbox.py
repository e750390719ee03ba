"""The alert outbox: alerts wait in the store while the receiver is down, go out in order, bounded."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.unit.conftest import Receiver
from watcher.actions.alerts import AlertmanagerAlerter
from watcher.actions.base import Alert
from watcher.actions.outbox import AlertOutbox
from watcher.retry import Backoff
from watcher.store import Store, StoreWriteError
from watcher.timefmt import format_rfc3339, parse_rfc3339

FAR = 10**6  # the firing TTL here: a fired alert ends FAR after its delivery, a resolve at its own time
ONCE: dict[str, Any] = {"backoff": Backoff(attempts=1, base_s=0.0), "sleep": lambda _s: None, "firing_ttl_s": FAR}


def alert(name: str, severity: str = "warning", summary: str = "") -> Alert:
    return Alert.build(name, None, severity=severity, annotations={"summary": summary} if summary else None)


def sent(receiver: Receiver) -> list[tuple[str, bool]]:
    """(alertname, resolved?) for every POST, in arrival order."""
    out = []
    for body in receiver.bodies():
        (item,) = body
        # a firing alert ends a TTL (FAR, see ONCE) after its delivery; a resolve when it was queued
        out.append((item["labels"]["alertname"], parse_rfc3339(item["endsAt"]) < Clock().now + FAR / 2))
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def outbox(store: Store, url: str, clock: Clock | None = None, **kwargs: Any) -> AlertOutbox:
    clock = clock or Clock()
    sink = AlertmanagerAlerter(url, clock=clock, **ONCE)
    return AlertOutbox(store, sink, "alertmanager", backoff=Backoff(base_s=0.01, cap_s=0.05), clock=clock, **kwargs)


def test_fire_only_queues_and_the_queue_goes_out_in_order_once_the_receiver_answers(receiver: Receiver) -> None:
    clock = Clock()
    box = outbox(Store(":memory:"), receiver.url, clock)
    receiver.statuses = [503] * 4  # Alertmanager down for four tries
    box.fire(alert("A"))
    box.fire(alert("B"))
    assert receiver.requests == []  # fire returned without waiting for the receiver
    clock.now += 30
    box.resolve(alert("A"))  # ended now, even if delivered much later
    resolved_at = clock.now
    clock.now += 600
    box.start()
    try:
        assert box.flush(10.0)
    finally:
        box.stop()
    assert sent(receiver)[-3:] == [("A", False), ("B", False), ("A", True)]
    assert len(receiver.requests) == 4 + 3
    assert receiver.bodies()[-1][0]["endsAt"] == format_rfc3339(resolved_at)
    assert box.stats()["delivered"] == 3 and box.stats()["queued"] == 0


def test_a_full_queue_drops_the_oldest_non_critical_first_and_says_so_once(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "watcher")
    box = outbox(Store(":memory:"), receiver.url, max_queued=3)
    for a in (alert("W1"), alert("C1", "critical"), alert("W2"), alert("W3"), alert("C2", "critical")):
        box.fire(a)
    assert [q.alert.name for q in box.pending()] == ["C1", "W3", "C2"]  # W1, then W2 went
    box.fire(alert("C3", "critical"))
    assert [q.alert.name for q in box.pending()] == ["C1", "C2", "C3"]
    box.fire(alert("C4", "critical"))  # only critical ones left: the oldest goes
    assert [q.alert.name for q in box.pending()] == ["C2", "C3", "C4"]
    assert box.stats()["dropped"] == 4
    assert sum("alert queue full" in r.getMessage() for r in caplog.records) == 1


def test_queued_alerts_survive_a_restart_and_the_next_watcher_delivers_them(tmp_path: Path, receiver: Receiver) -> None:
    path = tmp_path / "watcher.db"
    first = Store(path, writer=True)
    box = outbox(first, "http://127.0.0.1:9")  # nothing listens: stays queued
    box.fire(alert("A"))
    box.fire(alert("B", "critical"))
    box.resolve(alert("A"))
    assert box.deliver_once() is False
    first.close()

    second = Store(path, writer=True)
    again = outbox(second, receiver.url)
    assert [(q.kind, q.alert.name) for q in again.pending()] == [("fire", "A"), ("fire", "B"), ("resolve", "A")]
    again.start()
    try:
        assert again.flush(10.0)
    finally:
        again.stop()
        second.close()
    assert sent(receiver) == [("A", False), ("B", False), ("A", True)]


def test_a_repeated_fire_replaces_the_queued_one_but_a_resolve_in_between_keeps_both(receiver: Receiver) -> None:
    box = outbox(Store(":memory:"), receiver.url)
    box.fire(alert("A", summary="first"))
    box.fire(alert("A", summary="second"))
    assert [(q.kind, q.alert.annotations["summary"]) for q in box.pending()] == [("fire", "second")]
    box.resolve(alert("A"))
    box.fire(alert("A", summary="third"))
    assert [q.kind for q in box.pending()] == ["fire", "resolve", "fire"]
    while box.deliver_once():
        pass
    assert sent(receiver) == [("A", False), ("A", True), ("A", False)]


def test_a_refused_alert_is_dropped_and_does_not_block_the_queue(receiver: Receiver) -> None:
    box = outbox(Store(":memory:"), receiver.url)
    receiver.statuses = [400]
    box.fire(alert("Bad"))
    box.fire(alert("Good"))
    assert box.deliver_once() is True
    assert box.deliver_once() is True
    assert box.deliver_once() is None
    assert sent(receiver) == [("Bad", False), ("Good", False)]
    assert box.stats()["refused"] == 1 and box.stats()["delivered"] == 1


def test_an_unwritable_store_keeps_alerts_in_memory_and_still_delivers_them(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = outbox(Store(":memory:"), receiver.url)
    box.fire(alert("Stored"))

    def disk_full(*_a: Any) -> None:
        raise StoreWriteError("disk full")

    monkeypatch.setattr(box, "_write", disk_full)
    box.fire(alert("InMemory"))
    assert [q.alert.name for q in box.pending()] == ["Stored", "InMemory"]
    while box.deliver_once():
        pass
    assert sent(receiver) == [("Stored", False), ("InMemory", False)]


def test_errors_kept_and_logged_show_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "watcher")
    secret = "pw-Zq81"
    box = outbox(Store(":memory:"), f"http://am:{secret}@127.0.0.1:9/?token={secret}", secrets=[secret])
    box.fire(alert("A"))
    assert box.deliver_once() is False
    assert box.stats()["last_error"] and secret not in repr(box.stats())
    assert not any(secret in r.getMessage() + repr(getattr(r, "fields", "")) for r in caplog.records)
