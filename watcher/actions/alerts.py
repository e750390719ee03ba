"""Alerts to Alertmanager (API v2) and to a generic webhook: retried, deduplicated, no secrets logged.

Both alerters share one discipline. Connection errors, timeouts, 429 and 5xx are retried with
bounded exponential backoff and then reported as an :class:`ActionError`; any other 4xx is not
retried (the receiver refused the payload, retrying only delays the journal entry explaining
why). A firing alert whose fingerprint was already sent within ``dedup_window_s`` is not sent
again: Alertmanager deduplicates too, but a watcher re-evaluating every second must not turn into
a flood of POSTs, and a webhook has no dedup at all. A resolve is always sent and clears the
dedup entry, so the next fire of the same alert goes out.

Alertmanager expires a firing alert without ``endsAt`` after its ``resolve_timeout`` (5m by
default). A caller holding an alert open (a replica kept drained) should therefore fire it again
periodically; keep ``dedup_window_s`` well below ``resolve_timeout`` so those re-fires reach it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from watcher.actions.base import ActionError, Alert, Alerter, http_session
from watcher.redact import redact_text, redact_url, url_secrets
from watcher.retry import Backoff, RetryableError, with_retries
from watcher.timefmt import format_rfc3339

__all__ = [
    "FIRING_TTL_S",
    "AlertRefused",
    "AlertmanagerAlerter",
    "FanoutAlerter",
    "WebhookAlerter",
    "alertmanager_payload",
]

log = logging.getLogger("watcher")


class AlertRefused(ActionError):
    """The receiver refused the payload (a 4xx other than 429): sending it again cannot help.

    A subclass so that a caller that retries on its own (the outbox) can tell a refusal, which it
    drops, from a receiver that is down, which it waits for."""


FIRING_TTL_S = 180.0
"""How long a firing alert without an end of its own stays active in Alertmanager: three re-send
periods of the incident alerts (60 s), so one or two lost re-sends do not resolve it, and an alert
nobody re-sends any more (the watcher died) lapses within minutes instead of lingering."""


def alertmanager_payload(
    alert: Alert,
    *,
    ends_at: float | None = None,
    generator_url: str = "",
    now: float | None = None,
    firing_ttl_s: float = FIRING_TTL_S,
) -> dict[str, Any]:
    """One element of the ``POST /api/v2/alerts`` body (``postableAlert``).

    Every alert carries an ``endsAt``. A resolve carries its end; a firing alert without one gets
    ``now + firing_ttl_s``: without it Alertmanager sets ``startsAt + resolve_timeout`` (5 min) once,
    and an alert that has been firing longer than that (a replica held drained for an hour) would
    arrive already resolved. ``now`` is the delivery time, so an alert delivered late by the outbox
    is still active for a full TTL."""
    labels = {"alertname": alert.name, "severity": "warning", **dict(alert.labels)}
    body: dict[str, Any] = {
        "labels": {k: str(v) for k, v in labels.items() if str(v) != ""},  # Alertmanager: empty = absent
        "annotations": {k: str(v) for k, v in alert.annotations.items()},
        "startsAt": format_rfc3339(alert.starts_at),
    }
    end = ends_at if ends_at is not None else alert.ends_at
    if end is None:
        end = (time.time() if now is None else now) + firing_ttl_s
    body["endsAt"] = format_rfc3339(end)
    url = alert.generator_url or generator_url
    if url:
        body["generatorURL"] = url
    return body


class _HttpAlerter(Alerter):
    """POST with retries and fire-side dedup; subclasses say where to and what body."""

    kind = "alert"
    _token: str | None = None  # a bearer token, for receivers that take one

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        dedup_window_s: float = 60.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        firing_ttl_s: float = FIRING_TTL_S,
    ) -> None:
        self.url = url
        self.firing_ttl_s = firing_ttl_s
        self.display_url = redact_url(url, keep_path=self._keep_path)
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff(base_s=0.5, cap_s=8.0, attempts=4)
        self.dedup_window_s = dedup_window_s
        self._session = session or http_session()
        self._clock = clock
        self._sleep = sleep
        self._sent: dict[str, float] = {}  # fingerprint -> when last fired
        self._lock = threading.Lock()
        self.sent_count = 0  # POSTs that succeeded, for metrics and tests

    def _headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json"}

    _keep_path = True  # whether the URL's path may be shown (a webhook's path is its secret)

    @property
    def secrets(self) -> list[str]:
        """What of the configuration must never be printed: URL password, query (and path), token."""
        return url_secrets(self.url, keep_path=self._keep_path) + ([self._token] if self._token else [])

    def _scrub(self, text: str) -> str:
        """``text`` (an exception's, a receiver's answer) with every secret of the configuration masked."""
        return redact_text(text, self.secrets)

    def _body(self, alert: Alert, status: str, ends_at: float | None) -> Any:
        raise NotImplementedError

    def _post(self, body: Any, alert: Alert) -> None:
        what = f"{self.kind} {alert.name} [{alert.fingerprint}] to {self.display_url}"

        def attempt() -> None:
            try:
                resp = self._session.post(self.url, json=body, headers=self._headers(), timeout=self.timeout_s)
            except requests.RequestException as exc:
                # requests names the URL (path included) in its messages: scrub before it is kept
                raise RetryableError(self._scrub(f"{type(exc).__name__}: {exc}")) from None
            if resp.status_code == 429 or resp.status_code >= 500:
                raise RetryableError(self._scrub(f"HTTP {resp.status_code}: {resp.text[:200]}"))
            if resp.status_code >= 400:
                raise AlertRefused(self._scrub(f"{what}: refused with HTTP {resp.status_code}: {resp.text[:300]}"))

        with_retries(attempt, self.backoff, what, give_up=ActionError, sleep=self._sleep)
        self.sent_count += 1

    def fire(self, alert: Alert) -> None:
        """Send a firing alert unless the same fingerprint went out within the dedup window."""
        now = self._clock()
        with self._lock:
            last = self._sent.get(alert.fingerprint)
            if last is not None and now - last < self.dedup_window_s:
                return
            if len(self._sent) > 1000:  # every incident has its own fingerprint: forget the expired ones
                self._sent = {k: v for k, v in self._sent.items() if now - v < self.dedup_window_s}
            self._sent[alert.fingerprint] = now  # claim it: a concurrent duplicate is dropped
        try:
            self._post(self._body(alert, "firing", None), alert)
        except BaseException:
            with self._lock:
                if self._sent.get(alert.fingerprint) == now:
                    del self._sent[alert.fingerprint]  # not sent: the next fire must try again
            raise

    def resolve(self, alert: Alert) -> None:
        """Send the alert with ``endsAt`` = now (or its own ``ends_at``); always sent."""
        ends_at = alert.ends_at if alert.ends_at is not None else self._clock()
        self._post(self._body(alert, "resolved", ends_at), alert)
        with self._lock:
            self._sent.pop(alert.fingerprint, None)


class AlertmanagerAlerter(_HttpAlerter):
    """Alertmanager API v2: ``POST <url>/api/v2/alerts`` with a one-element list."""

    kind = "alertmanager alert"

    def __init__(self, url: str, *, generator_url: str = "", **kwargs: Any) -> None:
        base = url.rstrip("/")
        super().__init__(base if base.endswith("/api/v2/alerts") else base + "/api/v2/alerts", **kwargs)
        self.generator_url = generator_url

    def _body(self, alert: Alert, status: str, ends_at: float | None) -> Any:
        return [
            alertmanager_payload(
                alert,
                ends_at=ends_at,
                generator_url=self.generator_url,
                now=self._clock(),
                firing_ttl_s=self.firing_ttl_s,
            )
        ]


class WebhookAlerter(_HttpAlerter):
    """A generic JSON webhook, body shaped like Alertmanager's webhook (version 4) for reuse.

    ``token`` is sent as ``Authorization: Bearer``; it is never part of a message or repr.
    """

    kind = "webhook alert"
    _keep_path = False

    def __init__(self, url: str, token: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._token = token

    def __repr__(self) -> str:
        return f"WebhookAlerter(url={self.display_url!r}, token={'***' if self._token else None})"

    def _headers(self) -> dict[str, str]:
        headers = super()._headers()
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _body(self, alert: Alert, status: str, ends_at: float | None) -> Any:
        item = alertmanager_payload(alert, ends_at=ends_at, now=self._clock(), firing_ttl_s=self.firing_ttl_s)
        item["status"] = status
        item["fingerprint"] = alert.fingerprint
        return {"version": "4", "status": status, "receiver": "serving-watcher", "alerts": [item]}


class FanoutAlerter(Alerter):
    """Every configured alerter gets every alert; one failing does not stop the others."""

    def __init__(self, alerters: list[Alerter]) -> None:
        self.alerters = alerters

    def fire(self, alert: Alert) -> None:
        errors = []
        for a in self.alerters:
            try:
                a.fire(alert)
            except ActionError as exc:
                errors.append(str(exc))
        if errors:
            raise ActionError("; ".join(errors))

    def resolve(self, alert: Alert) -> None:
        for a in self.alerters:
            try:
                a.resolve(alert)
            except ActionError:
                log.warning("resolve failed", extra={"fields": {"alert": alert.name}})
