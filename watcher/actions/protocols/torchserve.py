"""TorchServe (``watcher.protocol=torchserve``): inference port for health and predictions, the
management port for the model's state.

* ready: ``GET /ping`` on the inference port answers ``{"status": "Healthy"}`` (500 with
  ``"Unhealthy"``, or ``"Partial Healthy"`` when some model has no worker), then the model must
  have a worker whose ``status`` is ``READY``;
* versions: ``GET /models/<m>`` on the management port describes the *default* version (the one
  ``POST /predictions/<m>`` serves) as ``[{"modelName", "modelVersion", "workers": [{"status":
  "READY"|"UNLOADING", ...}], ...}]``; 404 ``{"code": 404, "message": "Model not found: <m>"}``;
* predict: ``POST /predictions/<m>`` with ``{"instances": [...]}``; a handler answering
  ``{"predictions": [...]}`` or a bare list are both read.

TorchServe listens on 8080 (inference) and 8081 (management) by default; the management port is
the replica's port plus ``management_port_offset`` (default 1), as in TorchServe's own layout.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from watcher.actions.base import ActionError, Replica
from watcher.actions.protocols.base import Check, ServingProtocol, VersionState, error_of, highest_available

__all__ = ["TorchServe"]


class TorchServe(ServingProtocol):
    name = "torchserve"

    def __init__(
        self, timeout_s: float = 2.0, *, session: requests.Session | None = None, management_port_offset: int = 1
    ) -> None:
        super().__init__(timeout_s, session=session)
        self.management_port_offset = management_port_offset

    def management_url(self, replica: Replica) -> str:
        parts = urlsplit(replica.rest_url)
        port = (parts.port or 80) + self.management_port_offset
        return urlunsplit((parts.scheme, f"{parts.hostname}:{port}", "", "", ""))

    def ready(self, replica: Replica) -> Check:
        try:
            code, body = self._call(replica, "ping", "GET", f"{replica.rest_url}/ping")
            if code != 200 or not isinstance(body, dict) or body.get("status") != "Healthy":
                return Check(False, f"{replica}: ping HTTP {code}: {error_of(body) if code != 200 else body}")
            entries = self.versions(replica)
        except ActionError as exc:
            return Check(False, str(exc))
        available = highest_available(entries)
        if available is None:
            return Check(False, f"{replica}: model {replica.model} has no READY worker")
        return Check(True, f"model {replica.model} version {available} has a READY worker")

    def versions(self, replica: Replica) -> list[VersionState]:
        url = f"{self.management_url(replica)}/models/{replica.model}"
        code, body = self._call(replica, "model description", "GET", url)
        if code != 200 or not isinstance(body, list):
            raise ActionError(f"{replica}: model description HTTP {code}: {error_of(body)}")
        out = []
        for d in body:
            if not isinstance(d, dict):
                continue
            workers = [w for w in d.get("workers") or [] if isinstance(w, dict)]
            state = "AVAILABLE" if any(w.get("status") == "READY" for w in workers) else "LOADING"
            out.append(VersionState(str(d.get("modelVersion")), state))
        return out

    def predict(self, replica: Replica, instances: list[Any]) -> Any:
        url = f"{replica.rest_url}/predictions/{replica.model}"
        code, body = self._call(replica, "smoke prediction", "POST", url, {"instances": instances})
        if code != 200:
            raise ActionError(f"{replica}: smoke prediction HTTP {code}: {error_of(body)}")
        return body.get("predictions") if isinstance(body, dict) else body
