"""TF Serving REST (``watcher.protocol=tfserving``, the default).

Status is ``GET /v1/models/<name>`` (``model_version_status``: one entry per version with its
state and, for a version whose load ended badly, ``status.error_code`` / ``error_message``);
predictions are ``POST /v1/models/<name>:predict`` with ``{"instances": [...]}``.
"""

from __future__ import annotations

from typing import Any

from watcher.actions.base import ActionError, Replica
from watcher.actions.protocols.base import Check, ServingProtocol, VersionState, error_of, highest_available

__all__ = ["TFServingREST"]


class TFServingREST(ServingProtocol):
    name = "tfserving"

    def model_status(self, replica: Replica) -> list[dict[str, Any]]:
        """``model_version_status`` entries; raises :class:`ActionError` when unreachable or unknown."""
        code, body = self._call(replica, "model status", "GET", f"{replica.rest_url}/v1/models/{replica.model}")
        if not isinstance(body, dict):
            raise ActionError(f"{replica}: model status HTTP {code}, not JSON: {body}")
        if code != 200:
            raise ActionError(f"{replica}: model status HTTP {code}: {error_of(body)}")
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

    def ready(self, replica: Replica) -> Check:
        try:
            entries = self.versions(replica)
        except ActionError as exc:
            return Check(False, str(exc))
        available = highest_available(entries)
        if available is None:
            states = ", ".join(f"{e.version}={e.state}" for e in entries) or "no versions"
            return Check(False, f"{replica}: no version AVAILABLE ({states})")
        return Check(True, f"version {available} AVAILABLE")

    def predict(self, replica: Replica, instances: list[Any]) -> Any:
        url = f"{replica.rest_url}/v1/models/{replica.model}:predict"
        code, body = self._call(replica, "smoke prediction", "POST", url, {"instances": instances})
        if code != 200 or not isinstance(body, dict):
            raise ActionError(f"{replica}: smoke prediction HTTP {code}: {error_of(body)}")
        return body.get("predictions")
