"""Serving-protocol adapters: how the watcher asks a model server whether it serves correctly.

A replica's protocol is its ``watcher.protocol`` label (the name is ``protocol_label`` in the
settings); no label means ``tfserving``. A value the watcher does not know is an error naming the
container and the allowed values (:func:`protocol_name`), and such a replica is never verified on
a guess: verification fails with :class:`CannotVerifyError` and the replica stays drained.
"""

from __future__ import annotations

from watcher.actions.protocols.base import CannotVerifyError, Check, ServingProtocol, VersionState
from watcher.actions.protocols.kserve_v1 import KServeV1
from watcher.actions.protocols.tfserving import TFServingREST
from watcher.actions.protocols.torchserve import TorchServe
from watcher.actions.protocols.v2 import OpenInferenceV2

__all__ = [
    "ADAPTERS",
    "DEFAULT_PROTOCOL",
    "CannotVerifyError",
    "Check",
    "KServeV1",
    "OpenInferenceV2",
    "ServingProtocol",
    "TFServingREST",
    "TorchServe",
    "UnknownProtocolError",
    "VersionState",
    "protocol_name",
]

DEFAULT_PROTOCOL = TFServingREST.name
ADAPTERS: dict[str, type[ServingProtocol]] = {
    cls.name: cls for cls in (TFServingREST, OpenInferenceV2, KServeV1, TorchServe)
}


class UnknownProtocolError(CannotVerifyError):
    """A protocol label value no adapter answers to."""


def protocol_name(container: str, value: str | None, label: str = "watcher.protocol") -> str:
    """The adapter name for a container's protocol label value (None/empty: the default)."""
    if not value:
        return DEFAULT_PROTOCOL
    if value not in ADAPTERS:
        raise UnknownProtocolError(
            f"container {container}: unknown {label}={value!r}; allowed: {', '.join(sorted(ADAPTERS))}"
        )
    return value
