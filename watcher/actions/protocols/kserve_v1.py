"""KServe's V1 protocol (``watcher.protocol=kserve-v1``): TF Serving's URLs, other answers.

``GET /v1/models/<m>`` answers ``{"name": "<m>", "ready": true}`` (503 ``{"error": "Model with name
<m> is not ready."}`` while loading or after a failed load, 404 for an unknown model) and carries
no version: :meth:`versions` is None and the smoke prediction (``POST /v1/models/<m>:predict``,
``{"instances": [...]}`` -> ``{"predictions": [...]}``) is what tells versions apart.
"""

from __future__ import annotations

from typing import Any

from watcher.actions.base import ActionError, Replica
from watcher.actions.protocols.base import Check, ServingProtocol, VersionState, error_of

__all__ = ["KServeV1"]


class KServeV1(ServingProtocol):
    name = "kserve-v1"

    def ready(self, replica: Replica) -> Check:
        try:
            code, body = self._call(replica, "model status", "GET", f"{replica.rest_url}/v1/models/{replica.model}")
        except ActionError as exc:
            return Check(False, str(exc))
        if code == 200 and isinstance(body, dict) and body.get("ready") is True:
            return Check(True, f"model {replica.model} ready")
        return Check(False, f"{replica}: model {replica.model} not ready: HTTP {code} {error_of(body)}")

    def versions(self, replica: Replica) -> list[VersionState] | None:
        code, body = self._call(replica, "model status", "GET", f"{replica.rest_url}/v1/models/{replica.model}")
        if code == 404 or not isinstance(body, dict):
            raise ActionError(f"{replica}: model status HTTP {code}: {error_of(body)}")
        return None  # V1 has no versions: known model, version unknowable

    def predict(self, replica: Replica, instances: list[Any]) -> Any:
        url = f"{replica.rest_url}/v1/models/{replica.model}:predict"
        code, body = self._call(replica, "smoke prediction", "POST", url, {"instances": instances})
        if code != 200 or not isinstance(body, dict):
            raise ActionError(f"{replica}: smoke prediction HTTP {code}: {error_of(body)}")
        return body.get("predictions")
