"""The TF Serving REST adapter of :class:`~watcher.actions.verify.Verifier`.

Status is ``GET /v1/models/<name>`` (``model_version_status``: one entry per version with its
state and, for a version whose load ended badly, ``status.error_code`` / ``error_message``);
predictions are ``POST /v1/models/<name>:predict`` with ``{"instances": [...]}``. Every failure is
an :class:`~watcher.actions.base.ActionError` naming the replica and what TF Serving said.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import requests

from watcher.actions.base import ActionError, Replica, http_session
from watcher.actions.verify import Verifier, VersionState

__all__ = ["TFServingVerifier"]


class TFServingVerifier(Verifier):
    """TF Serving model checks over REST (``replica.rest_url``), with an injectable clock for tests."""

    def __init__(
        self,
        timeout_s: float = 2.0,
        *,
        poll_s: float = 0.25,
        rel_tol: float = 1e-5,
        abs_tol: float = 1e-6,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(timeout_s, poll_s=poll_s, rel_tol=rel_tol, abs_tol=abs_tol, clock=clock, sleep=sleep)
        self._session = session or http_session()

    def model_status(self, replica: Replica) -> list[dict[str, Any]]:
        """``model_version_status`` entries; raises :class:`ActionError` when unreachable or unknown."""
        url = f"{replica.rest_url}/v1/models/{replica.model}"
        try:
            resp = self._session.get(url, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ActionError(f"{replica}: model status unreachable: {type(exc).__name__}") from None
        try:
            body = resp.json()
        except ValueError:
            raise ActionError(f"{replica}: model status HTTP {resp.status_code}, not JSON: {resp.text[:200]}") from None
        if resp.status_code != 200:
            raise ActionError(f"{replica}: model status HTTP {resp.status_code}: {body.get('error', body)}")
        entries = body.get("model_version_status")
        if not isinstance(entries, list):
            raise ActionError(f"{replica}: model status without model_version_status: {str(body)[:200]}")
        return [e for e in entries if isinstance(e, dict)]

    def versions(self, replica: Replica) -> list[VersionState]:
        out: list[VersionState] = []
        for e in self.model_status(replica):
            status = e.get("status") or {}
            code = str(status.get("error_code", "OK"))
            error = None if code in ("OK", "0", "") else f"{code}: {status.get('error_message', '')}"
            out.append(VersionState(str(e.get("version")), str(e.get("state")), error))
        return out

    def predict(self, replica: Replica, instances: list[Any]) -> Any:
        url = f"{replica.rest_url}/v1/models/{replica.model}:predict"
        try:
            resp = self._session.post(url, data=json.dumps({"instances": instances}), timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ActionError(f"{replica}: smoke prediction failed: {type(exc).__name__}") from None
        try:
            body = resp.json()
        except ValueError:
            body = {"error": resp.text[:200]}
        if resp.status_code != 200:
            raise ActionError(f"{replica}: smoke prediction HTTP {resp.status_code}: {body.get('error', body)}")
        return body.get("predictions")
