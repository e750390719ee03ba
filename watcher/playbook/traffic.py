"""Steps that move traffic: drain, set a weight, wait for idleness or for the finding to resolve, restore, hold.

Setting a weight is idempotent, so none of these needs to look at the world after a watcher
restart: a step whose outcome was not journalled simply runs again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Self

from pydantic import Field

from watcher.playbook.base import Step
from watcher.playbook.registry import register

if TYPE_CHECKING:
    from watcher.playbook.context import StepContext


@register
class Drain(Step):
    """Weight 0. A drain that fails has changed nothing, so the incident ends FAILED, not HELD."""

    kind = "drain"
    hold_on_error = False

    @property
    def takes_capacity(self) -> bool:
        return True

    def run(self, ctx: StepContext) -> str:
        ctx.shifter.set_weight(ctx.replica, 0)
        return "weight 0"


@register
class SetWeight(Step):
    kind = "weight"
    weight: int = Field(ge=0)

    @property
    def takes_capacity(self) -> bool:
        return self.weight == 0

    def run(self, ctx: StepContext) -> str:
        ctx.shifter.set_weight(ctx.replica, self.weight)
        return f"weight {self.weight}"

    @classmethod
    def _example(cls) -> Self:
        return cls(weight=0)


@register
class WaitIdle(Step):
    """Wait for in-flight requests to finish; a load balancer that cannot confirm idleness gets
    ``settle_s`` to notice the weight first."""

    kind = "wait_idle"
    changes_fleet = False
    settle_s: float = 0.0
    timeout_s: float = 30.0

    def run(self, ctx: StepContext) -> str:
        if not ctx.shifter.confirms_idle:
            time.sleep(self.settle_s)  # a blind LB: give it time to notice the weight
        idle = ctx.shifter.wait_idle(ctx.replica, self.timeout_s)
        return "idle" if idle else "in-flight requests still running at the deadline; going on"

    @classmethod
    def _example(cls) -> Self:
        return cls(settle_s=0.01, timeout_s=0.5)


@register
class AwaitResolved(Step):
    """Keep the weight until the finding that opened the incident resolves (bounded)."""

    kind = "await_resolved"
    changes_fleet = False
    timeout_s: float = 600.0

    def run(self, ctx: StepContext) -> str:
        incident = ctx.incident
        if ctx.resolved.wait_since(incident.target, incident.rule_id, incident.opened, self.timeout_s):
            return "finding resolved"
        return f"finding still firing after {self.timeout_s:.0f}s; restoring anyway"

    @classmethod
    def _example(cls) -> Self:
        return cls(timeout_s=0.2)


@register
class Restore(Step):
    kind = "restore"

    def run(self, ctx: StepContext) -> str:
        weight = ctx.shifter.original_weight(ctx.replica)
        ctx.shifter.set_weight(ctx.replica, weight)
        return f"weight {weight} restored"


@register
class Hold(Step):
    """Out of rotation and kept there, with a critical alert: the rule says a restart will not help,
    or (``why``) the guard rails refused the restart of a replica that could not wait for it."""

    kind = "hold"
    ends_held = True
    why: str = ""  # the alert's reason; empty: the rule's own hold (a restart will not fix it)

    @property
    def takes_capacity(self) -> bool:
        return True

    def run(self, ctx: StepContext) -> str:
        ctx.shifter.set_weight(ctx.replica, 0)
        why = self.why or "a restart will not fix it"
        ctx.alerts.incident(ctx.incident, "critical", f"replica held drained ({ctx.incident.predicts}); {why}")
        return "held drained"

    @classmethod
    def _example(cls) -> Self:
        return cls(why="restart refused: backing off")
