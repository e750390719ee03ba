"""Steps that check the replica after a restart before it gets traffic back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Self

from watcher.actions.base import ActionError
from watcher.actions.verify import CannotVerifyError
from watcher.playbook.base import Step, StepFailed
from watcher.playbook.registry import register
from watcher.playbook.verification import check_serving

if TYPE_CHECKING:
    from watcher.playbook.context import StepContext


@register
class WaitAvailable(Step):
    kind = "wait_available"
    changes_fleet = False
    timeout_s: float = 60.0

    def run(self, ctx: StepContext) -> str:
        try:
            version = ctx.verifier.wait_available(ctx.replica, self.timeout_s)
        except CannotVerifyError as exc:
            raise StepFailed(f"cannot verify: {exc}", hold=True) from exc
        except ActionError as exc:
            raise StepFailed(f"model not AVAILABLE after restart: {exc}", hold=True) from exc
        return f"version {version} AVAILABLE" if version is not None else "model ready (protocol reports no version)"

    @classmethod
    def _example(cls) -> Self:
        return cls(timeout_s=5.0)


@register
class Verify(Step):
    """The expected version is served and a smoke prediction matches (see :mod:`.verification`)."""

    kind = "verify"
    changes_fleet = False
    settle_s: float = 0.0

    def run(self, ctx: StepContext) -> str:
        time.sleep(self.settle_s)
        return check_serving(
            ctx.verifier,
            ctx.replica,
            ctx.incident.version_before,
            ctx.config.pinned_versions.get(ctx.replica.model),
            ctx.config.model_repo,
        )

    @classmethod
    def _example(cls) -> Self:
        return cls(settle_s=0.01)
