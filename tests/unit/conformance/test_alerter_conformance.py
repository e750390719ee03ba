"""Every alerter honours the :class:`~watcher.actions.base.Alerter` contract, against a real receiver.

Implementations are found by walking ``Alerter.__subclasses__()`` over the product's modules; each
needs a factory in :data:`FACTORIES` (``test_every_alerter_has_a_factory`` fails until it has one),
and then runs the whole suite: fire and resolve reach an HTTP receiver on 127.0.0.1, duplicates
are dropped, transient failures are retried, refusals are not, and the secret in its
configuration never shows in a message or a log line.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

import watcher.actions
from tests.plugins import implementations
from tests.unit.conftest import Receiver
from watcher.actions.alerts import AlertmanagerAlerter, FanoutAlerter, WebhookAlerter
from watcher.actions.base import ActionError, Alert, Alerter
from watcher.actions.outbox import AlertOutbox
from watcher.model import Target
from watcher.retry import Backoff
from watcher.timefmt import parse_rfc3339

SECRET = "s3cr3t-Xq7"
QUICK = {"backoff": Backoff(attempts=3, base_s=0.01), "sleep": lambda _s: None}

# (receiver URL, secret) -> an alerter whose configuration carries the secret
FACTORIES: dict[type[Alerter], Callable[[str, str], Alerter]] = {
    # Alertmanager behind basic auth: the secret is the password in the URL
    AlertmanagerAlerter: lambda url, secret: AlertmanagerAlerter(
        url.replace("http://", f"http://watcher:{secret}@"), **QUICK
    ),
    # a Slack-style webhook: a secret path and a bearer token
    WebhookAlerter: lambda url, secret: WebhookAlerter(f"{url}/hooks/{secret}", token=secret, **QUICK),
    FanoutAlerter: lambda url, secret: FanoutAlerter([WebhookAlerter(f"{url}/hooks/{secret}", token=secret, **QUICK)]),
}


# Alerters with a deliberately different contract, each with its own suite. The outbox queues and
# delivers later, so it never raises for a receiver that is down and sends after ``fire`` returns:
# tests/unit/actions/test_outbox.py checks order, retries, refusals, dedup and secrets for it.
DEFERRED: set[type[Alerter]] = {AlertOutbox}


def _implementations() -> set[type[Alerter]]:
    return implementations(Alerter, private=False)


def test_every_alerter_has_a_factory() -> None:
    assert watcher.actions.WebhookAlerter is WebhookAlerter
    assert _implementations() == set(FACTORIES) | DEFERRED


@pytest.fixture(params=list(FACTORIES), ids=lambda c: c.__name__)
def alerter(request: pytest.FixtureRequest, receiver: Receiver) -> Alerter:
    return FACTORIES[request.param](receiver.url, SECRET)


def alert(**labels: str) -> Alert:
    return Alert.build("ReplicaDrained", Target("tfsim-0", service="m"), severity="critical", labels=labels)


def _mentions(body: Any, a: Alert) -> bool:
    text = json.dumps(body)
    return all(json.dumps(v) in text for v in a.labels.values())


def _ends_at(body: Any) -> float:
    items = body["alerts"] if isinstance(body, dict) else body
    (item,) = items
    return parse_rfc3339(item["endsAt"])


def test_fire_and_resolve_reach_the_receiver(alerter: Alerter, receiver: Receiver) -> None:
    """A firing alert ends in the future (Alertmanager keeps it active until then, not until its
    start + resolve_timeout); its resolve ends now."""
    a = alert()
    before = time.time()
    alerter.fire(a)
    assert len(receiver.requests) == 1
    fired = receiver.bodies()[0]
    assert _mentions(fired, a) and _ends_at(fired) >= before + 60
    alerter.resolve(a)
    assert len(receiver.requests) == 2
    resolved = receiver.bodies()[1]
    assert _mentions(resolved, a) and before - 1 <= _ends_at(resolved) <= time.time() + 1


def test_duplicates_are_dropped_until_resolved(alerter: Alerter, receiver: Receiver) -> None:
    a = alert()
    threads = [threading.Thread(target=alerter.fire, args=(a,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    alerter.fire(a)
    assert len(receiver.requests) == 1  # eight concurrent fires and a repeat: one POST
    alerter.fire(alert(other="label"))  # another fingerprint is another alert
    assert len(receiver.requests) == 2
    alerter.resolve(a)
    alerter.fire(a)  # after a resolve the same alert goes out again
    assert len(receiver.requests) == 4


def test_transient_failures_are_retried(alerter: Alerter, receiver: Receiver) -> None:
    receiver.statuses = [503, 429]
    alerter.fire(alert())
    assert len(receiver.requests) == 3


def test_gives_up_with_an_action_error_and_tries_again_next_time(alerter: Alerter, receiver: Receiver) -> None:
    receiver.statuses = [503] * 3
    with pytest.raises(ActionError):
        alerter.fire(alert())
    assert len(receiver.requests) == 3
    alerter.fire(alert())  # not sent, so not a duplicate
    assert len(receiver.requests) == 4


def test_a_refusal_is_not_retried(alerter: Alerter, receiver: Receiver) -> None:
    receiver.statuses = [400]
    with pytest.raises(ActionError, match="400"):
        alerter.fire(alert())
    assert len(receiver.requests) == 1


def test_an_unreachable_receiver_is_an_action_error(receiver: Receiver) -> None:
    receiver.server.shutdown()
    receiver.server.server_close()
    for cls, make in FACTORIES.items():
        with pytest.raises(ActionError) as info:
            make(receiver.url, SECRET).fire(alert())
        assert SECRET not in str(info.value), cls.__name__


def test_the_secret_never_shows(alerter: Alerter, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    messages: list[str] = [repr(alerter)]
    for i, statuses in enumerate(([502, 200], [401], [503] * 3)):
        receiver.statuses = list(statuses)
        try:
            alerter.fire(alert(round=str(i)))
        except ActionError as exc:
            messages.append(str(exc))
    assert len(messages) == 3  # two failures were reported, with messages
    path, headers, _body = receiver.requests[0]
    auth = headers.get("Authorization", "")
    basic = base64.b64decode(auth.removeprefix("Basic ")).decode() if auth.startswith("Basic ") else ""
    assert SECRET in path + auth + basic  # the secret is used...
    for text in messages:
        assert SECRET not in text  # ...but never shown
    own = [r.getMessage() for r in caplog.records if not r.name.startswith("urllib3")]
    assert not any(SECRET in m for m in own)
    # urllib3 logs request lines (a secret *path* would show there at DEBUG, which is why the
    # service runs urllib3 at WARNING); headers and basic-auth credentials never reach a log.
    assert not any(SECRET in m and urlsplit(receiver.url).netloc not in m for m in caplog.messages)
