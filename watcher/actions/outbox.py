"""A durable, bounded alert outbox: alerts wait in the store while their receiver is down.

Without it an alert POST is retried for a few seconds and then given up: an Alertmanager restart
or a minute of network trouble loses exactly the alerts that explain the trouble. With it,
``fire`` and ``resolve`` only write the alert to the store (one short transaction, so the
decision thread never waits for a receiver) and one delivery thread per receiver sends the queue
in order, retrying the head with backoff until the receiver takes it. The queue is in SQLite, so a
watcher restarted while its receiver was down delivers what the last one queued.

Ordering and Alertmanager's semantics. Alerts go out in the order they were queued, so a resolve
never overtakes the fire it ends. Re-sending a firing alert is idempotent in Alertmanager (same
labels, same alert), which makes at-least-once delivery safe; a resolve carries the ``endsAt``
taken when it was queued, not when it was finally sent, so Alertmanager records when the problem
really ended. A fire of an alert whose latest queued entry is also a fire replaces that entry in
place (the newest annotations win) instead of queueing a repeat: a watcher that re-fires every
few seconds during an outage fills the queue with nothing new otherwise.

Bounded. At most ``max_queued`` entries per receiver; when full, the oldest non-critical entry is
dropped (the oldest critical one only when every entry is critical). Drops are counted (``stats``,
shown in /status and /metrics) and logged with one line per episode of fullness, not per drop.
A payload the receiver refuses (4xx) is dropped too: sending it again cannot help.

A store that cannot be written (disk full) must not silence alerts: the entry is then kept in
memory (same bound) and sent after the queued ones, so alerting goes on, but it does not survive a
restart. Nothing secret is stored: entries hold the alert (labels, annotations, times), never the
receiver's URL or token; errors are the receivers' own, already scrubbed, and masked again here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from watcher.actions.alerts import AlertRefused
from watcher.actions.base import ActionError, Alert, Alerter
from watcher.redact import redact_text
from watcher.retry import Backoff
from watcher.store import Store, StoreWriteError

__all__ = ["AlertOutbox", "QueuedAlert", "alert_from_json", "alert_to_json"]

log = logging.getLogger("watcher")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, kind TEXT NOT NULL, fingerprint TEXT NOT NULL,
    severity TEXT NOT NULL, queued REAL NOT NULL, alert TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_outbox_sink ON alert_outbox (sink, id);
"""

FIRE, RESOLVE = "fire", "resolve"


@dataclass(frozen=True)
class QueuedAlert:
    """One entry of the queue: ``id`` is the row (negative: kept in memory, the store was not writable)."""

    id: int
    kind: str
    alert: Alert
    queued: float


def alert_to_json(alert: Alert) -> str:
    return json.dumps(
        {
            "name": alert.name,
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "starts_at": alert.starts_at,
            "ends_at": alert.ends_at,
            "fingerprint": alert.fingerprint,
            "generator_url": alert.generator_url,
        },
        separators=(",", ":"),
    )


def alert_from_json(text: str) -> Alert:
    doc = json.loads(text)
    return Alert(
        name=doc["name"],
        labels=doc["labels"],
        annotations=doc["annotations"],
        starts_at=doc["starts_at"],
        ends_at=doc["ends_at"],
        fingerprint=doc["fingerprint"],
        generator_url=doc.get("generator_url", ""),  # rows queued by an older watcher have none
    )


class AlertOutbox(Alerter):
    """``sink`` (an Alertmanager or webhook alerter) behind a durable queue named ``name`` in ``store``.

    Unlike the direct alerters, ``fire`` and ``resolve`` do not raise when the receiver is down:
    delivery is the outbox's job from then on (see the module docstring).
    """

    def __init__(
        self,
        store: Store,
        sink: Alerter,
        name: str,
        *,
        max_queued: int = 1000,
        backoff: Backoff | None = None,
        secrets: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.store, self.sink, self.name, self.max_queued = store, sink, name, max_queued
        self.backoff = backoff or Backoff(base_s=0.5, cap_s=15.0)
        self.secrets = list(secrets)
        self._clock = clock
        store.migrate(_SCHEMA)
        self._lock = threading.Lock()  # one enqueue at a time: the bound is checked and kept atomically
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsaved: deque[QueuedAlert] = deque()  # the store was not writable when these came
        self._unsaved_seq = 0
        self._undeleted: set[int] = set()  # delivered, but the row could not be deleted yet
        self._full_logged = False
        self.delivered = 0
        self.dropped = 0
        self.refused = 0
        self.last_error = ""
        self.failing_since: float | None = None

    # -- the Alerter side: queue, never wait -------------------------------------------------
    def fire(self, alert: Alert) -> None:
        self._enqueue(FIRE, alert)

    def resolve(self, alert: Alert) -> None:
        """Queued with its end time fixed now, so a late delivery still says when it ended."""
        if alert.ends_at is None:
            alert = dataclasses.replace(alert, ends_at=self._clock())
        self._enqueue(RESOLVE, alert)

    def _enqueue(self, kind: str, alert: Alert) -> None:
        now = self._clock()
        severity = str(alert.labels.get("severity", "warning"))
        with self._lock:
            try:
                self._write(kind, alert, severity, now)
            except StoreWriteError as exc:
                log.warning(
                    "alert kept in memory: the store is not writable",
                    extra={"fields": {"sink": self.name, "alert": alert.name, "error": str(exc)}},
                )
                self._unsaved_seq -= 1
                self._unsaved.append(QueuedAlert(self._unsaved_seq, kind, alert, now))
                while len(self._unsaved) > self.max_queued:
                    self._drop_from_memory()
        self._wake.set()

    def _write(self, kind: str, alert: Alert, severity: str, now: float) -> None:
        body = alert_to_json(alert)
        with self.store.transaction() as db:
            if kind == FIRE:
                last = db.execute(
                    "SELECT id, kind FROM alert_outbox WHERE sink = ? AND fingerprint = ? ORDER BY id DESC LIMIT 1",
                    (self.name, alert.fingerprint),
                ).fetchone()
                if last is not None and last[1] == FIRE:  # the same alert already waits: newest content wins
                    db.execute(
                        "UPDATE alert_outbox SET alert = ?, severity = ? WHERE id = ?", (body, severity, last[0])
                    )
                    return
            (count,) = db.execute("SELECT COUNT(*) FROM alert_outbox WHERE sink = ?", (self.name,)).fetchone()
            if count >= self.max_queued:
                victim = (
                    db.execute(
                        "SELECT id FROM alert_outbox WHERE sink = ? AND severity != 'critical' ORDER BY id LIMIT 1",
                        (self.name,),
                    ).fetchone()
                    or db.execute(
                        "SELECT id FROM alert_outbox WHERE sink = ? ORDER BY id LIMIT 1", (self.name,)
                    ).fetchone()
                )
                db.execute("DELETE FROM alert_outbox WHERE id = ?", (victim[0],))
                self._count_drop()
            db.execute(
                "INSERT INTO alert_outbox (sink, kind, fingerprint, severity, queued, alert) VALUES (?, ?, ?, ?, ?, ?)",
                (self.name, kind, alert.fingerprint, severity, now, body),
            )

    def _drop_from_memory(self) -> None:
        victim = next((q for q in self._unsaved if q.alert.labels.get("severity") != "critical"), self._unsaved[0])
        self._unsaved.remove(victim)
        self._count_drop()

    def _count_drop(self) -> None:
        self.dropped += 1
        if not self._full_logged:
            self._full_logged = True
            log.warning(
                "alert queue full: dropping the oldest non-critical alerts",
                extra={"fields": {"sink": self.name, "max_queued": self.max_queued}},
            )

    # -- the queue ---------------------------------------------------------------------------------
    def pending(self, limit: int = 100_000) -> list[QueuedAlert]:
        """What waits, in delivery order (stored entries first, then those kept in memory)."""
        with self.store.reading() as db:
            rows = db.execute(
                "SELECT id, kind, alert, queued FROM alert_outbox WHERE sink = ? ORDER BY id LIMIT ?",
                (self.name, limit + len(self._undeleted)),
            ).fetchall()
        stored = [QueuedAlert(r[0], r[1], alert_from_json(r[2]), r[3]) for r in rows if r[0] not in self._undeleted]
        return (stored + list(self._unsaved))[:limit]

    def _count(self) -> int:
        with self.store.reading() as db:
            (stored,) = db.execute("SELECT COUNT(*) FROM alert_outbox WHERE sink = ?", (self.name,)).fetchone()
        return int(stored) - len(self._undeleted) + len(self._unsaved)

    def _remove(self, entry: QueuedAlert) -> None:
        if entry.id < 0:
            with self._lock:
                if entry in self._unsaved:
                    self._unsaved.remove(entry)
            return
        try:
            with self.store.transaction() as db:
                db.execute("DELETE FROM alert_outbox WHERE id = ?", (entry.id,))
        except StoreWriteError:
            self._undeleted.add(entry.id)  # do not send it again; delete when the store is back

    def _retry_deletes(self) -> None:
        if not self._undeleted:
            return
        ids = sorted(self._undeleted)
        try:
            with self.store.transaction() as db:
                db.executemany("DELETE FROM alert_outbox WHERE id = ?", [(i,) for i in ids])
        except StoreWriteError:
            return
        self._undeleted.difference_update(ids)

    def stats(self) -> dict[str, Any]:
        """For /status and /metrics."""
        waiting = self.pending()
        return {
            "queued": len(waiting),
            "oldest_queued": waiting[0].queued if waiting else None,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "refused": self.refused,
            "failing_since": self.failing_since,
            "last_error": self.last_error,
            "max_queued": self.max_queued,
        }

    # -- delivery ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"alerts-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop delivering; what is still queued stays in the store for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def flush(self, timeout_s: float) -> bool:
        """Wait until the queue is empty (tests, an orderly stop); False when time ran out."""
        deadline = time.monotonic() + timeout_s
        while self.pending(limit=1):
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.02)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            delivered = self.deliver_once()
            if delivered is None:
                self._wake.wait(1.0)
            elif delivered:
                self.backoff.reset()
            else:
                self._stop.wait(self.backoff.next_delay())  # only a stop cuts a backoff short

    def deliver_once(self) -> bool | None:
        """Try the head of the queue once: True sent (or dropped as refused), False the receiver is
        down, None nothing waits. The delivery thread's step; tests call it to deliver in step."""
        self._retry_deletes()
        head = self.pending(limit=1)
        return self._deliver(head[0]) if head else None

    def _deliver(self, entry: QueuedAlert) -> bool:
        """Send the head of the queue; False when the receiver is down (the entry stays at the head)."""
        try:
            if entry.kind == RESOLVE:
                self.sink.resolve(entry.alert)
            else:
                self.sink.fire(entry.alert)
        except AlertRefused as exc:
            self.refused += 1
            log.warning(
                "alert refused by the receiver; dropped",
                extra={"fields": {"sink": self.name, "alert": entry.alert.name, "error": self._mask(exc)}},
            )
        except ActionError as exc:
            if self.failing_since is None:
                self.failing_since = self._clock()
                log.warning(
                    "alert receiver unreachable; alerts are queued",
                    extra={"fields": {"sink": self.name, "error": self._mask(exc)}},
                )
            self.last_error = self._mask(exc)
            return False
        except Exception as exc:  # a bug in one sink must not kill delivery for good
            self.last_error = self._mask(exc)
            log.exception("alert delivery failed", extra={"fields": {"sink": self.name}})
            return False
        else:
            self.delivered += 1
        if self.failing_since is not None:
            log.info(
                "alert receiver back; delivering the queue",
                extra={"fields": {"sink": self.name, "down_s": round(self._clock() - self.failing_since, 1)}},
            )
            self.failing_since = None
        self._remove(entry)
        if self._full_logged and self._count() < self.max_queued:
            self._full_logged = False  # the next time it fills up is a new episode, worth a line
        return True

    def _mask(self, exc: BaseException) -> str:
        return redact_text(str(exc), self.secrets)
