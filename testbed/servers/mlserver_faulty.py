"""MLServer's own scikit-learn runtime, with the testbed's model-made faults (:mod:`.faults`).

The predictions, the codecs, the error handling and the logs are MLServer's and
``mlserver_sklearn``'s; only the model misbehaves: it keeps memory per request, raises on a share
of requests, waits, blocks the server's event loop, or refuses to load a version, as the fault
file says. The model folders name it as their ``implementation``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mlserver_sklearn import SKLearnModel  # type: ignore[import-not-found, unused-ignore]

from testbed.servers.faults import Faults


class FaultySKLearnModel(SKLearnModel):  # type: ignore[misc, unused-ignore]
    async def load(self) -> bool:
        self.faults = Faults()
        self.faults.check_load(str(self.version or ""))
        loaded: bool = await super().load()
        return loaded

    async def predict(self, payload: Any) -> Any:
        delay = self.faults.before_request()
        if delay:
            await asyncio.sleep(delay)
        return await super().predict(payload)
