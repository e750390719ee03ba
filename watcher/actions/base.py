"""The interfaces every actuator family implements, and the few helpers they share.

Like APScheduler's ``abc.py``, this file holds only contracts: the executor is written against
:class:`TrafficShifter`, :class:`Restarter` and :class:`Alerter`, never against Nginx or HAProxy,
so a new load balancer is one new module. The bases are ABCs rather than Protocols so that every
implementation names its family: the shared conformance and behaviour suites find implementations
by walking ``__subclasses__()`` (a new one is covered the moment it exists), a missing method fails
at construction rather than mid-incident, and defaults such as ``confirms_idle`` live in one place.
Every failure an actuator can report is an :class:`ActionError` whose message says what failed and
why, because that message is what the journal and the alert will show.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from watcher.model import Target


class ActionError(RuntimeError):
    """An action failed; the message is written for the journal (what, on which target, why)."""


class ChangeRefused(ActionError):
    """The load balancer refused a change and still runs the config it ran before.

    The shifter has put its own file (or state) back to what the load balancer last accepted, so
    ``get_weight`` tells the truth again; nothing about the replica changed. The executor holds
    the incident on this error instead of retrying the same change (it would be refused again)
    or restarting a replica whose traffic could not be moved. ``reason`` is the load balancer's
    own words (an Nginx ``[emerg]`` line), redacted and bounded, or None when it could not be read.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Replica:
    """What actuators need to know about one replica, beyond its container."""

    target: Target
    upstream: str  # "127.0.0.1:8501": how the load balancer addresses it
    rest_url: str  # "http://127.0.0.1:8501": TF Serving REST
    model: str
    lb_name: str | None = None  # HAProxy server name; None for Nginx (matched by address)
    protocol: str | None = None  # the protocol label's value (None: the default, TF Serving REST)

    def __str__(self) -> str:
        return f"{self.target.key} ({self.upstream})"


class TrafficShifter(ABC):
    """A load balancer that can move traffic away from one replica and back.

    Contract (checked for every subclass by ``tests/integration/test_shifter_behaviour.py``
    against the real servers):

    * ``set_weight`` returns only once the change is live in the load balancer (0 = drain: no
      new request reaches the replica); repeating it is harmless;
    * ``get_weight`` is what is live now, 0 when drained or down;
    * ``original_weight`` is the weight the operator configured, kept in the load balancer's own
      state (config file, runtime API), so a new shifter object (a restarted watcher) knows it;
    * ``wait_idle`` waits, bounded by ``timeout_s``, for requests in flight to the replica to end;
    * a replica the load balancer does not know, or any failure, raises :class:`ActionError`.

    Methods may be called from several worker threads at once; an implementation serialises its
    own changes.
    """

    @property
    def confirms_idle(self) -> bool:
        """Whether ``wait_idle`` observes the replica's requests end (so a drain needs no blind
        settle time after it); False means it can only wait for what it sees and the executor
        adds the configured settle time."""
        return False

    @abstractmethod
    def set_weight(self, replica: Replica, weight: int) -> None:
        """Apply ``weight`` (0 = drain); when this returns the change is confirmed live."""

    @abstractmethod
    def get_weight(self, replica: Replica) -> int:
        """The weight currently configured (0 when drained or down)."""

    @abstractmethod
    def wait_idle(self, replica: Replica, timeout_s: float) -> bool:
        """Wait (bounded) until requests in flight to the replica have finished; False on timeout."""

    @abstractmethod
    def original_weight(self, replica: Replica) -> int:
        """The weight before the watcher touched it; survives a watcher restart."""


class Restarter(ABC):
    """Restarts (or recreates) the container behind a target.

    Each call blocks until the container is running again (or raises :class:`ActionError` saying
    why not); calls for different targets may run concurrently.
    """

    @abstractmethod
    def restart(self, target: Target, stop_timeout_s: float) -> dict[str, Any]:
        """Graceful restart; returns the container state once it is running again."""

    @abstractmethod
    def recreate(self, target: Target, stop_timeout_s: float = 10.0) -> dict[str, Any]:
        """A fresh container with the same configuration; returns its state once running."""

    @abstractmethod
    def state(self, target: Target) -> dict[str, Any]:
        """The container state, normalised (see :meth:`DockerRestarter.state`)."""


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as the watcher raises it. ``fingerprint`` identifies it for dedup and resolve."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    starts_at: float = 0.0  # unix seconds
    ends_at: float | None = None  # None while firing
    fingerprint: str = ""  # computed from the labels (plus the name) when left empty
    generator_url: str = ""  # where a human sees what raised it (the incident in the watcher's API)

    def __post_init__(self) -> None:
        if not self.fingerprint:  # an empty key would make every alert a duplicate of every other
            object.__setattr__(self, "fingerprint", fingerprint({"alertname": self.name, **self.labels}))

    @classmethod
    def build(
        cls,
        name: str,
        target: Target | None,
        *,
        severity: str = "warning",
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        starts_at: float | None = None,
        replica_label: str = "replica",
        generator_url: str = "",
    ) -> Alert:
        """An alert with the standard labels (alertname, severity, target...) and its fingerprint.

        ``replica_label`` (the container's name) is the label the Prometheus series carry, so one
        inhibit rule or silence with ``equal: [replica]`` covers the watcher's alerts and Prometheus'.

        The fingerprint covers the labels only, as Alertmanager's does, so firing the "same"
        alert with new annotations is still a duplicate and a resolve finds the alert it ends.
        """
        merged: dict[str, str] = {"alertname": name, "severity": severity}
        if target is not None:
            merged.update(target=target.key, container=target.container, engine=target.engine)
            merged[replica_label] = target.container
            if target.service:
                merged["service"] = target.service
        merged.update(labels or {})
        return cls(
            name=name,
            labels=merged,
            annotations=dict(annotations or {}),
            starts_at=time.time() if starts_at is None else starts_at,
            fingerprint=fingerprint(merged),
            generator_url=generator_url,
        )


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable identifier of a label set (order-independent)."""
    blob = json.dumps(sorted(labels.items()), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Alerter(ABC):
    """Somewhere alerts go: Alertmanager, a webhook, a fan-out of several.

    Contract (``tests/unit/conformance/test_alerter_conformance.py`` checks every subclass against an HTTP
    receiver): ``fire`` delivers a firing alert, dropping a duplicate fingerprint inside the
    dedup window; ``resolve`` always delivers the alert with an end time. Transient failures are
    retried with bounded backoff, then raised as :class:`ActionError`; a secret (token, URL path)
    never appears in a message or a log line. Safe to call from several threads.
    """

    @abstractmethod
    def fire(self, alert: Alert) -> None:
        """Send a firing alert (a duplicate inside the dedup window is not re-sent)."""

    @abstractmethod
    def resolve(self, alert: Alert) -> None:
        """Send the same alert with ``endsAt`` = now."""


def http_session() -> requests.Session:
    """A session that ignores proxy environment variables.

    The watcher talks to load balancers, model servers and Alertmanager on its own network (in
    the testbed: loopback); routing those calls through an ``HTTP_PROXY`` meant for the internet
    would be both wrong and a leak.
    """
    session = requests.Session()
    session.trust_env = False
    return session
