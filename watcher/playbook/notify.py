"""The ``alert`` step: tell a human, change nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from pydantic import Field

from watcher.playbook.base import Step
from watcher.playbook.registry import register

if TYPE_CHECKING:
    from watcher.playbook.context import StepContext


@register
class SendAlert(Step):
    kind = "alert"
    changes_fleet = False
    severity: str = "warning"
    # added to the alert's annotations (after the rule's own; $replica, $eta ... are filled in)
    annotations: dict[str, str] = Field(default_factory=dict)
    # sent as the label ``receiver``, which the shipped alertmanager.yml routes on (add a route per name)
    receiver: str | None = None

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "annotations": dict(self.annotations)}
        if self.receiver:
            out["receiver"] = self.receiver
        return out

    def run(self, ctx: StepContext) -> str:
        ctx.alerts.incident(ctx.incident, self.severity, annotations=self.annotations, receiver=self.receiver)
        return "alert sent"

    @classmethod
    def _example(cls) -> Self:
        return cls(severity="critical", annotations={"runbook": "https://example.invalid/oom"}, receiver="oncall")
