"""The contract every serving-protocol adapter implements: how to ask a model server whether its
model is ready, which version it serves, and what it predicts.

The watcher restores traffic to a restarted replica only on evidence. Servers answer these three
questions in different words (TF Serving's ``model_version_status``, the Open Inference Protocol's
``/v2/models/<m>/ready``, KServe V1's ``{"ready": true}``, TorchServe's worker states), so each
protocol is one small adapter over :class:`ServingProtocol`; the protocol-independent rules (wait
boundedly, expected version, smoke comparison, settling) live once in
:class:`watcher.actions.verify.Verifier`. ``tests/unit/conformance/test_protocol_conformance.py``
checks every adapter against the same recorded server behaviour.

Adapters hold no state between calls (one instance serves several worker threads) and bound every
request by ``timeout_s``. Every failure is an :class:`~watcher.actions.base.ActionError` naming the
replica and what the server said.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import requests

from watcher.actions.base import ActionError, Replica, http_session

__all__ = ["CannotVerifyError", "Check", "ServingProtocol", "VersionState"]


class CannotVerifyError(ActionError):
    """The watcher cannot tell whether this replica serves correctly (unknown protocol, nothing to
    compare against): the replica stays drained and a human is told, never restored on a guess."""


@dataclass(frozen=True, slots=True)
class VersionState:
    """One model version as the server reports it, in TF Serving's words (adapters map theirs)."""

    version: str
    state: str  # "AVAILABLE", "LOADING", "UNLOADING", "END", ...
    error: str | None = None  # "CODE: message" when a load attempt ended in an error


@dataclass(frozen=True, slots=True)
class Check:
    """A yes/no answer with the server's own reason, for the journal."""

    ok: bool
    why: str

    def __bool__(self) -> bool:
        return self.ok


class ServingProtocol(ABC):
    """One serving protocol, spoken to ``replica.rest_url``.

    * :meth:`ready`: the server is up and the replica's model is ready to serve (never raises);
    * :meth:`versions`: the model's versions and their states, or ``None`` when the protocol (or
      this server) cannot say which version it serves; :class:`ActionError` when unreachable or the
      model is unknown (a replica still starting looks exactly like that);
    * :meth:`predict`: predictions for smoke ``instances`` (rows of numbers, as in ``smoke.json``)
      from the endpoint clients call, in the shape ``smoke.json`` stores; :class:`ActionError` with
      the server's own error otherwise.
    """

    name: ClassVar[str]  # the value of the protocol label that selects this adapter

    def __init__(self, timeout_s: float = 2.0, *, session: requests.Session | None = None) -> None:
        self.timeout_s = timeout_s
        self._session = session or http_session()

    @abstractmethod
    def ready(self, replica: Replica) -> Check:
        """Whether the replica's model answers requests now, and the server's words for why not."""

    @abstractmethod
    def versions(self, replica: Replica) -> list[VersionState] | None:
        """Version states; None when the protocol cannot report versions."""

    @abstractmethod
    def predict(self, replica: Replica, instances: list[Any]) -> Any:
        """Predictions for ``instances`` from the unversioned endpoint."""

    # -- shared -----------------------------------------------------------------------------------
    def served_version(self, replica: Replica) -> str | None:
        """The highest AVAILABLE version; None when nothing is available, the replica is down, or
        the protocol cannot say."""
        try:
            entries = self.versions(replica)
        except ActionError:
            return None
        return highest_available(entries or [])

    def _call(self, replica: Replica, what: str, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON or the raw text) or :class:`ActionError` when unreachable."""
        try:
            resp = self._session.request(
                method,
                url,
                data=None if body is None else json.dumps(body),
                headers={"Content-Type": "application/json"} if body is not None else None,
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            raise ActionError(f"{replica}: {what} unreachable: {type(exc).__name__}") from None
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, resp.text[:200]


def version_key(version: str) -> tuple[int, str]:
    """Numeric versions by value, named ones after none (TF Serving's and MLServer's ordering)."""
    return (int(version), "") if version.isdigit() else (-1, version)


def highest_available(entries: list[VersionState]) -> str | None:
    versions = [e.version for e in entries if e.state == "AVAILABLE"]
    return max(versions, key=version_key) if versions else None


def error_of(body: Any) -> Any:
    """The server's error message out of a JSON error body (``{"error": ...}``, KServe's
    ``{"detail": ...}``, TorchServe's ``{"message": ...}``), else the body itself."""
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if key in body:
                return body[key]
    return body
