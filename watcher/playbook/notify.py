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
    severity: str = "warning"
    # carried from the rule pack into the journal; the alert itself names the rule and what it predicts
    annotations: dict[str, str] = Field(default_factory=dict)
    receiver: str | None = None

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "annotations": dict(self.annotations)}
        if self.receiver:
            out["receiver"] = self.receiver
        return out

    def run(self, ctx: StepContext) -> str:
        ctx.alerts.incident(ctx.incident, self.severity, f"{ctx.incident.rule_id}: {ctx.incident.predicts}")
        return "alert sent"

    @classmethod
    def _example(cls) -> Self:
        return cls(severity="critical", annotations={"runbook": "https://example.invalid/oom"}, receiver="oncall")
