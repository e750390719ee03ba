"""One watcher, assembled: store, journal, policy, fleet, executor and live driver, wired together.

The service (``watcher run``) and the testbed harness (integration tests, chaos benchmark, demo)
run the same watcher; only what surrounds it differs (the API and metrics, the load balancer's
location, which alerts go where). Building it in one place keeps the two from drifting apart: a
callback the executor needs (resolved findings, for instance) is wired for both or for neither.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from watcher.actions.base import Alerter, TrafficShifter
from watcher.actions.docker import DockerRestarter
from watcher.actions.verify import Verifier
from watcher.fleet import Fleet
from watcher.journal import Journal
from watcher.live import LiveConfig, LiveWatcher
from watcher.model import Finding
from watcher.policy import GuardConfig, Policy
from watcher.remediation import Executor, ExecutorConfig
from watcher.rulepack.compile import RuleSet
from watcher.store import Store


@dataclass
class Assembly:
    store: Store
    journal: Journal
    policy: Policy
    fleet: Fleet
    executor: Executor
    live: LiveWatcher


def assemble(
    *,
    store: Path,
    clients: Mapping[str, docker.DockerClient],
    ruleset: RuleSet,
    live_config: LiveConfig,
    shifter: TrafficShifter,
    alerter: Alerter,
    guard: GuardConfig,
    executor_config: ExecutorConfig,
    model_label: str = "watcher.model",
    on_finding: Callable[[Finding], object] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> Assembly:
    """Every finding, resolved ones included, reaches the executor (``on_finding`` defaults to it):
    a plan that only moves traffic waits for its finding to resolve. The executor's rules and the
    live driver's engine and queries come from one compiled ``ruleset``."""
    opened = Store(store)
    journal = Journal(opened)
    policy = Policy(opened, guard)
    fleet = Fleet(
        clients,
        live_config.label_selector,
        weight_of=shifter.get_weight,
        service_label=live_config.service_label,
        upstream_label=live_config.upstream_label,
        model_label=model_label,
    )
    executor = Executor(
        policy,
        journal,
        fleet,
        shifter,
        DockerRestarter(clients),
        Verifier(),
        alerter,
        dict(ruleset.executor_rules),
        executor_config,
        on_event=on_event,
    )
    live = LiveWatcher(live_config, ruleset, opened, on_finding=on_finding or executor.on_finding)
    return Assembly(opened, journal, policy, fleet, executor, live)
