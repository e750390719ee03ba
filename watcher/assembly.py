"""One watcher, assembled: store, journal, policy, fleet, executor, decision thread and live driver.

The service (``watcher run``) and the testbed harness (integration tests, chaos benchmark, demo)
run the same watcher; only what surrounds it differs (the API and metrics, the load balancer's
location, which alerts go where). Building it in one place keeps the two from drifting apart: a
callback the executor needs (resolved findings, for instance) is wired for both or for neither.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from watcher.actions.alerts import FanoutAlerter
from watcher.actions.base import Alerter, TrafficShifter
from watcher.actions.docker import DockerRestarter
from watcher.actions.outbox import AlertOutbox
from watcher.actions.verify import Verifier
from watcher.decisions import Decisions
from watcher.fleet import Fleet
from watcher.inventory import Inventory, LabelNames
from watcher.journal import Journal
from watcher.live import LiveConfig, LiveWatcher
from watcher.model import Finding
from watcher.playbook.executor import Executor, ExecutorConfig
from watcher.policy import GuardConfig, Policy
from watcher.rulepack.compile import RuleSet
from watcher.store import Store

log = logging.getLogger("watcher")


@dataclass
class Assembly:
    store: Store
    journal: Journal
    policy: Policy
    fleet: Fleet
    executor: Executor
    decisions: Decisions
    live: LiveWatcher
    alerter: Alerter
    outboxes: list[AlertOutbox] = field(default_factory=list)

    def start(self) -> None:
        """Resume incidents a dead watcher left open, then decide, then read (in that order, so no
        finding meets a half-started watcher)."""
        for outbox in self.outboxes:  # first: alerts queued by a previous watcher go out while it resumes
            outbox.start()
        resumed = self.executor.recover()
        if resumed:
            log.info("resuming incidents left running", extra={"fields": {"incidents": resumed}})
        self.decisions.start()
        self.live.start()

    def stop(self, grace_s: float) -> None:
        """Stop reading, decide what was already found, release steps that wait for findings (none
        will come), give running steps ``grace_s`` and hand the rest to the journal. The store stays
        open for the caller (the API may still answer while it stops)."""
        self.live.stop()
        self.decisions.stop()
        self.executor.interrupt_waits()
        try:
            self.executor.wait(grace_s)
        except TimeoutError:
            log.warning("playbook steps still running at shutdown; the journal hands them to the next start")
        self.executor.shutdown()
        for outbox in self.outboxes:  # last: what it could not deliver stays queued in the store
            outbox.stop()


def assemble(
    *,
    store: Path | Store,
    clients: Mapping[str, docker.DockerClient],
    ruleset: RuleSet,
    live_config: LiveConfig,
    shifter: TrafficShifter,
    alerter: Alerter | None = None,
    alert_sinks: Mapping[str, Alerter] | None = None,
    alert_queue_max: int = 1000,
    alert_secrets: Sequence[str] = (),
    guard: GuardConfig,
    executor_config: ExecutorConfig,
    model_label: str = "watcher.model",
    protocol_label: str = "watcher.protocol",
    on_finding: Callable[[Finding], object] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> Assembly:
    """Every finding, resolved ones included, goes from the engine thread to the decision thread,
    which hands it to ``on_finding`` (default: the executor): a plan that only moves traffic waits
    for its finding to resolve. The executor's rules and the live driver's engine and queries come
    from one compiled ``ruleset``. The decision thread's tick decides again the executor's refused,
    still-active findings whose refusal can have lapsed (the restart backoff ended, capacity came back).

    Alerts go either to ``alerter`` directly (the testbed's recording alerters) or, given
    ``alert_sinks`` (name -> receiver), through one durable outbox per receiver in the store
    (:mod:`watcher.actions.outbox`), so a receiver that is down delays alerts instead of losing them."""
    opened = store if isinstance(store, Store) else Store(store, writer=True)  # one writer per store
    outboxes = [
        AlertOutbox(opened, sink, name, max_queued=alert_queue_max, secrets=alert_secrets)
        for name, sink in (alert_sinks or {}).items()
    ]
    if alerter is None:
        alerter = FanoutAlerter(list(outboxes))
    journal = Journal(opened)
    policy = Policy(opened, guard)
    # One inventory for the watcher: its sources and the fleet see the same replicas.
    labels = LabelNames(
        tuple(live_config.label_selector),
        live_config.service_label,
        live_config.upstream_label,
        model_label,
        protocol_label,
    )
    inventory = Inventory(clients, labels, rescan_s=live_config.rescan_s)
    fleet = Fleet(inventory, weight_of=shifter.get_weight)
    executor = Executor(
        policy,
        journal,
        fleet,
        shifter,
        DockerRestarter(clients),
        Verifier(protocol_label=protocol_label),
        alerter,
        dict(ruleset.executor_rules),
        executor_config,
        on_event=on_event,
    )
    decisions = Decisions(on_finding or executor.on_finding, on_tick=executor.retry_refused)
    live = LiveWatcher(live_config, ruleset, opened, on_finding=decisions.submit, inventory=inventory)
    return Assembly(opened, journal, policy, fleet, executor, decisions, live, alerter, outboxes)
