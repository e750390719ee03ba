"""What a step is given to act with, so no step reaches into the executor.

The executor builds one :class:`StepContext` per step from its current actuators and rules (a rule
reload between two steps is seen by the next one, as before), which is also what lets a test run a
single step against fakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watcher.actions.base import Replica, Restarter, TrafficShifter
    from watcher.actions.verify import Verifier
    from watcher.clock import Clock
    from watcher.journal import Incident
    from watcher.playbook.alerting import IncidentAlerts
    from watcher.playbook.resolutions import ResolvedFindings
    from watcher.policy import Policy
    from watcher.rulepack.schema import Defaults


@dataclass
class ExecutorConfig:
    model_repo: Path | None = None  # TF Serving model repository (expected version + smoke inputs)
    pinned_versions: dict[str, str] = field(default_factory=dict)  # model -> version
    workers: int = 4
    alert_name: str = "ServingWatcher"
    alert_resend_s: float = 60.0  # an open incident's alert is re-sent this often (well inside resolve_timeout)
    external_url: str = ""  # the watcher's API as people reach it; alerts link <external_url>/incidents/<id>
    replica_label: str = "replica"  # the label naming the container, as on the Prometheus series


@dataclass(frozen=True)
class StepContext:
    incident: Incident
    replica: Replica
    shifter: TrafficShifter
    restarter: Restarter
    verifier: Verifier
    alerts: IncidentAlerts
    policy: Policy
    clock: Clock
    config: ExecutorConfig
    defaults: Defaults  # the guard-rail defaults of the incident's rule (restart budget window)
    resolved: ResolvedFindings  # when findings resolved, for steps that wait for that
