"""MLServer's own scikit-learn runtime, with the testbed's model-made faults (:mod:`.faults`).

The predictions, the codecs, the error handling and the logs are MLServer's and
``mlserver_sklearn``'s; only the model misbehaves: it keeps memory per request, raises on a share
of requests, waits, blocks the server's event loop, or refuses to load a version, as the fault
file says. The model folders name it as their ``implementation``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import joblib  # type: ignore[import-not-found, unused-ignore]
from mlserver.utils import get_model_uri  # type: ignore[import-not-found, unused-ignore]
from mlserver_sklearn import SKLearnModel  # type: ignore[import-not-found, unused-ignore]

from testbed.servers.faults import Faults
from testbed.servers.models import version_folder


class FaultySKLearnModel(SKLearnModel):  # type: ignore[misc, unused-ignore]
    async def load(self) -> bool:
        self.faults = Faults()
        version = str(self.version or "")
        self.faults.check_load(version)
        loaded: bool = await super().load()
        served = self.faults.served_version(version)
        if served != version:  # an older artifact rolled back under this version's name
            uri = Path(await get_model_uri(self._settings))
            self._model = joblib.load(uri.parent.parent / version_folder(served) / uri.name)
        return loaded

    async def predict(self, payload: Any) -> Any:
        delay = self.faults.before_request()
        if delay:
            await asyncio.sleep(delay)
        return await super().predict(payload)
