"""After a restart: is the replica serving the right model, and does it answer?

Any doubt keeps the replica drained (``StepFailed(hold=True)``): handing traffic back to a replica
that loaded the wrong version or failed to load is the outage the watcher exists to prevent. A
replica the watcher *cannot* verify (its protocol label names no adapter; its protocol reports no
version and there is no stored smoke prediction to tell versions apart) is held the same way --
never restored on a guess.
"""

from __future__ import annotations

from pathlib import Path

from watcher.actions.base import ActionError, Replica
from watcher.actions.verify import CannotVerifyError, Verifier
from watcher.playbook.base import StepFailed


def check_serving(
    verifier: Verifier,
    replica: Replica,
    version_before: str | None,
    pinned: str | None,
    model_repo: Path | None,
) -> str:
    """The journal detail when all is well; raises :class:`StepFailed` (hold) otherwise."""
    try:
        reports_versions = verifier.reports_versions(replica)
    except CannotVerifyError as exc:
        raise StepFailed(f"cannot verify: {exc}", hold=True) from exc
    except ActionError as exc:
        raise StepFailed(f"model status unreadable: {exc}", hold=True) from exc
    base = model_repo / replica.model if model_repo is not None else None
    expected = verifier.expected_version(base, pinned, version_before)
    if not reports_versions:
        return _by_smoke_only(verifier, replica, expected, model_repo)
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


def _by_smoke_only(verifier: Verifier, replica: Replica, expected: str | None, model_repo: Path | None) -> str:
    """A protocol without versions (KServe V1): the stored smoke answers of the expected version
    are the only evidence which version answers, so without them the replica stays drained."""
    protocol = verifier.adapter(replica).name
    if expected is None or model_repo is None:
        raise StepFailed(
            f"cannot verify: protocol {protocol} reports no version and no expected version/model_repo "
            "is configured to compare a smoke prediction against",
            hold=True,
        )
    try:
        verifier.smoke(replica, expected, model_repo)
    except CannotVerifyError as exc:
        raise StepFailed(f"cannot verify: protocol {protocol} reports no version and {exc}", hold=True) from exc
    except ActionError as exc:
        raise StepFailed(f"smoke prediction failed: {exc}", hold=True) from exc
    return f"protocol {protocol} reports no version; smoke prediction of expected version {expected} ok"
