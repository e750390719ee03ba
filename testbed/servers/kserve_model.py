"""A pure-Python ``kserve.Model``: version-dependent linear answers, and a load that can fail.

KServe's V1 and V2 REST both serve it (``/v1/models/<m>:predict``, ``/v2/models/<m>/infer``).
``fail_load=True`` makes :meth:`load` raise, as a model whose artifact is broken would; the
launcher registers it anyway, so the server is up and the model is not ready. The fault switch
(:mod:`testbed.servers.faults`, ``TESTBED_FAULTS``) makes the model leak, raise, wait, hang or
refuse a version, inside KServe's real server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kserve  # type: ignore[import-not-found, unused-ignore]
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # type: ignore[import-not-found, unused-ignore]

from testbed.servers.faults import Faults
from testbed.servers.models import VERSIONS


class LinearModel(kserve.Model):  # type: ignore[misc, unused-ignore]
    def __init__(self, name: str, version: str, fail_load: bool = False) -> None:
        super().__init__(name)
        self.version = version
        self.fail_load = fail_load
        self.faults = Faults()
        self.slope, self.intercept = 0.0, 0.0

    def load(self) -> bool:
        if self.fail_load:
            raise RuntimeError(f"model {self.name} version {self.version}: artifact unreadable (testbed fault)")
        self.faults.check_load(self.version)
        self.slope, self.intercept = VERSIONS[self.faults.served_version(self.version)]
        self.ready = True
        return True

    def _rows(self, payload: Any) -> list[float]:
        if isinstance(payload, InferRequest):
            return [float(x) for x in payload.inputs[0].data]
        if isinstance(payload, bytes | str):  # KServe 0.16 hands V1 bodies over undecoded
            payload = json.loads(payload)
        return [float(r[0] if isinstance(r, list) else r) for r in payload["instances"]]

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        delay = self.faults.before_request()
        if delay:
            await asyncio.sleep(delay)
        ys = [self.slope * x + self.intercept for x in self._rows(payload)]
        if isinstance(payload, InferRequest):
            out = InferOutput(name="output-0", shape=[len(ys)], datatype="FP64", data=ys)
            return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or "smoke")
        return {"predictions": ys}
