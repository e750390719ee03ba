"""The Open Inference Protocol V2 (``watcher.protocol=v2``): MLServer, KServe's V2 REST, Triton.

* ready: ``GET /v2/health/live`` then ``GET /v2/models/<m>/ready`` (200 = ready; MLServer answers
  400 with an empty body when not ready, KServe 503 ``{"error": ...}``);
* versions: the repository extension ``POST /v2/repository/index`` (MLServer, Triton) lists every
  model version with ``state`` READY / LOADING / UNLOADING / UNAVAILABLE and a ``reason`` (the load
  error). A server without it (KServe) falls back to the metadata ``GET /v2/models/<m>`` and its
  ``versions``; a model without versions (KServe: "versioning not supported yet") means the protocol
  cannot say, so :meth:`versions` returns None and only the smoke prediction tells versions apart;
* predict: ``POST /v2/models/<m>/infer`` (the unversioned endpoint serves the newest version) with
  the smoke rows as one FP64 tensor ``[n, k]``; the first output comes back nested by its shape
  (``[n, 1]`` as n values, the shape TF Serving answers for one value per instance).
"""

from __future__ import annotations

from typing import Any

from watcher.actions.base import ActionError, Replica
from watcher.actions.protocols.base import Check, ServingProtocol, VersionState, error_of

__all__ = ["OpenInferenceV2"]

# Repository-index states (MLServer ``ModelState``, Triton's) in TF Serving's words.
_STATES = {"READY": "AVAILABLE", "LOADING": "LOADING", "UNLOADING": "UNLOADING", "UNAVAILABLE": "END"}


def nest(data: list[Any], shape: list[int]) -> Any:
    """A flat row-major tensor as nested lists of ``shape`` (what ``smoke.json`` stores)."""
    if len(shape) <= 1:
        return list(data)
    step = len(data) // shape[0] if shape[0] else 0
    return [nest(data[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


class OpenInferenceV2(ServingProtocol):
    name = "v2"

    def _model_url(self, replica: Replica) -> str:
        return f"{replica.rest_url}/v2/models/{replica.model}"

    def ready(self, replica: Replica) -> Check:
        try:
            code, body = self._call(replica, "liveness", "GET", f"{replica.rest_url}/v2/health/live")
            if code != 200:
                return Check(False, f"{replica}: server not live: HTTP {code} {error_of(body) or ''}".rstrip())
            code, body = self._call(replica, "model readiness", "GET", f"{self._model_url(replica)}/ready")
        except ActionError as exc:
            return Check(False, str(exc))
        if code != 200:
            why = f"{replica}: model {replica.model} not ready: HTTP {code} {error_of(body) or ''}"
            return Check(False, why.rstrip())
        return Check(True, f"model {replica.model} ready")

    def versions(self, replica: Replica) -> list[VersionState] | None:
        code, body = self._call(replica, "repository index", "POST", f"{replica.rest_url}/v2/repository/index", {})
        if code == 200 and isinstance(body, list):
            return self._from_index(replica, body)
        return self._from_metadata(replica)

    def _from_index(self, replica: Replica, index: list[Any]) -> list[VersionState] | None:
        mine = [e for e in index if isinstance(e, dict) and e.get("name") == replica.model]
        if not mine:
            raise ActionError(f"{replica}: model {replica.model} not in the repository index")
        if any(not e.get("version") for e in mine):
            return None  # an unversioned model: the server cannot say which version it serves
        out = []
        for e in mine:
            state = _STATES.get(str(e.get("state")), str(e.get("state")))
            reason = str(e.get("reason") or "") or "load failed (the server gave no reason)"
            out.append(VersionState(str(e["version"]), state, f"UNAVAILABLE: {reason}" if state == "END" else None))
        return out

    def _from_metadata(self, replica: Replica) -> list[VersionState] | None:
        code, body = self._call(replica, "model metadata", "GET", self._model_url(replica))
        if code != 200 or not isinstance(body, dict):
            raise ActionError(f"{replica}: model metadata HTTP {code}: {error_of(body)}")
        versions = [str(v) for v in body.get("versions") or []]
        if not versions:
            return None
        out = []
        for v in versions:
            code, _ = self._call(replica, "version readiness", "GET", f"{self._model_url(replica)}/versions/{v}/ready")
            out.append(VersionState(v, "AVAILABLE" if code == 200 else "LOADING"))
        return out

    def predict(self, replica: Replica, instances: list[Any]) -> Any:
        rows = [r if isinstance(r, list) else [r] for r in instances]
        flat = [float(x) for r in rows for x in r]
        shape = [len(rows), len(rows[0]) if rows else 0]
        request = {"inputs": [{"name": "input-0", "shape": shape, "datatype": "FP64", "data": flat}]}
        code, body = self._call(replica, "smoke prediction", "POST", f"{self._model_url(replica)}/infer", request)
        if code != 200 or not isinstance(body, dict):
            raise ActionError(f"{replica}: smoke prediction HTTP {code}: {error_of(body)}")
        outputs = body.get("outputs")
        if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
            raise ActionError(f"{replica}: smoke prediction without outputs: {str(body)[:200]}")
        first = outputs[0]
        shape = [int(d) for d in first.get("shape") or []]
        if len(shape) == 2 and shape[1] == 1:
            shape = shape[:1]  # one value per row (MLServer's sklearn answers [n, 1]): as TF Serving's
        return nest(list(first.get("data") or []), shape)
