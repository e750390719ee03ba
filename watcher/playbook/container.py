"""Steps that restart the container: the only ones that must never run twice.

A restart whose intent is journalled counts as done when Docker says the container started after
the intent; and a container Docker's own restart policy already brought back after the incident
opened (a crash or an OOM kill while drained) is not restarted again.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Self

from watcher.actions.base import ActionError
from watcher.playbook.base import Step, StepFailed
from watcher.playbook.registry import register
from watcher.timefmt import docker_time

if TYPE_CHECKING:
    from watcher.playbook.context import StepContext


class _ContainerStart(Step):
    restarts = True

    @property
    def takes_capacity(self) -> bool:
        return True

    @staticmethod
    def _started_at(ctx: StepContext) -> float:
        return docker_time(str(ctx.restarter.state(ctx.replica.target).get("started_at", "")))

    def already_happened(self, ctx: StepContext, intent_ts: float) -> bool:
        return self._started_at(ctx) > intent_ts

    @abstractmethod
    def _act(self, ctx: StepContext) -> None: ...

    def run(self, ctx: StepContext) -> str:
        if self._started_at(ctx) > ctx.incident.opened:
            # Docker's restart policy already brought it back after the incident opened (a crash
            # or an OOM kill while drained): a second restart would only cost time and budget.
            return "skipped: the container already restarted after the incident opened"
        ctx.policy.record_restart(ctx.incident.target, ctx.clock.now(), ctx.defaults.max_restarts.per)
        try:
            self._act(ctx)
        except ActionError as exc:
            raise StepFailed(f"{self.kind} failed: {exc}", hold=True) from exc
        return "container running again"


@register
class Restart(_ContainerStart):
    kind = "restart"
    stop_timeout_s: float = 10.0

    def _act(self, ctx: StepContext) -> None:
        ctx.restarter.restart(ctx.replica.target, self.stop_timeout_s)

    @classmethod
    def _example(cls) -> Self:
        return cls(stop_timeout_s=3.0)


@register
class Recreate(_ContainerStart):
    kind = "recreate"

    def _act(self, ctx: StepContext) -> None:
        ctx.restarter.recreate(ctx.replica.target)
