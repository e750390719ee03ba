"""After a restart: is the replica serving the right model, and does it answer?

Any doubt keeps the replica drained (``StepFailed(hold=True)``): handing traffic back to a replica
that loaded the wrong version or failed to load is the outage the watcher exists to prevent.
"""

from __future__ import annotations

from pathlib import Path

from watcher.actions.base import ActionError, Replica
from watcher.actions.verify import Verifier
from watcher.playbook.base import StepFailed


def check_serving(
    verifier: Verifier,
    replica: Replica,
    version_before: str | None,
    pinned: str | None,
    model_repo: Path | None,
) -> str:
    """The journal detail when all is well; raises :class:`StepFailed` (hold) otherwise."""
    base = model_repo / replica.model if model_repo is not None else None
    expected = verifier.expected_version(base, pinned, version_before)
    served = verifier.served_version(replica)
    failure = verifier.load_failed(replica)
    if failure:
        raise StepFailed(f"model load failed: {failure}", hold=True)
    if expected is not None and served != expected:
        raise StepFailed(f"version mismatch: serving {served}, expected {expected}", hold=True)
    if expected is not None and model_repo is not None:
        try:
            verifier.smoke(replica, expected, model_repo)
        except ActionError as exc:
            raise StepFailed(f"smoke prediction failed: {exc}", hold=True) from exc
    return f"serving version {served} (expected {expected}); smoke prediction ok"
