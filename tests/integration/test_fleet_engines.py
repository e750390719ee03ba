"""One service over three Docker engines, one of which goes away and comes back (issue #18).

Replicas of service ``svc``: one on the shared engine, one on each of two engines of the test's own
(:class:`testbed.engines.ExtraEngine`, ``--live-restore``: the replica prints on while its engine is
down). The watcher's pieces run in-process as ``assemble`` wires them (one inventory over every
engine, the logs source on it with cursors committed after processing, the fleet view, the real
policy and executor); the load balancer is the unit tests' in-memory one, and a fault is a finding
handed to the executor, so the test is about the engines, not about a model server.

Engine ``e1`` stops: its replica becomes unknown, an alert names the engine, a finding on that
replica is refused; a fault on the two reachable replicas at once is handled within the rails
(max_unavailable 2 with the unknown one counted: one drained, the other refused). ``e1`` comes
back: the alert resolves and its replica's log resumes from the cursor, no line lost or repeated.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from testbed.engines import ExtraEngine
from testbed.images import base_tag
from tests.integration.test_engine_restart import COUNTER, IMAGE, RecordingConsumer, engine_log
from tests.unit.test_executor import FakeShifter, FakeVerifier, NoDocker
from tests.unit.test_fleet_rails import RecordingAlerts, finding
from watcher.engine_alerts import EngineAlerts
from watcher.fleet import Fleet
from watcher.inventory import Inventory, LabelNames, make_clients
from watcher.journal import Journal
from watcher.playbook.executor import Executor
from watcher.policy import GuardConfig, Policy
from watcher.rulepack.compile import load_packs
from watcher.sources.base import SignalQueue
from watcher.sources.docker_logs import DockerLogsSource
from watcher.store import Store

pytestmark = pytest.mark.integration

RESCAN_S = 1.0
ENGINE_DOWN = "ServingWatcherEngineDown"
PACK = """
pack: p
defaults: {cooldown: 10m, max_restarts: {count: 3, per: 1h}, max_unavailable: 2, min_healthy: 1}
rules:
  - id: slow
    match: {log: 'upstream timed out'}
    predicts: latency
    then: [{weight: 0}]
"""


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, ExtraEngine]]:
    with ExtraEngine(name="e1") as e1, ExtraEngine(name="e2") as e2:
        for eng in (e1, e2):
            eng.import_host_tools(IMAGE)
        yield {"e1": e1, "e2": e2}


def run_replica(client: docker.DockerClient, image: str, shell: str, name: str, run: str, port: int) -> Any:
    labels = {
        "watcher.enable": "true",
        "fleet-test": run,
        "watcher.service": "svc",
        "watcher.upstream": f"127.0.0.1:{port}",  # the in-memory load balancer's address for it
        "watcher.model": "m",
    }
    return client.containers.run(
        image, [shell, "-c", COUNTER], name=name, labels=labels, network_mode="host", detach=True
    )


def wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_engine_that_goes_away_and_returns(
    docker_client: docker.DockerClient, engines: dict[str, ExtraEngine], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    names = {engine: f"fleet-{run}-{engine}" for engine in ("shared", "e1", "e2")}
    containers = {"shared": run_replica(docker_client, base_tag(), "sh", names["shared"], run, 9301)}
    for i, (engine, eng) in enumerate(engines.items()):
        containers[engine] = run_replica(eng.client(), IMAGE, "dash", names[engine], run, 9302 + i)
    store = Store(tmp_path / "w.db")
    queue = SignalQueue(100_000, 200_000)
    urls = {"shared": "", **{engine: eng.url for engine, eng in engines.items()}}
    inventory = Inventory(make_clients(urls), LabelNames(selector=(f"fleet-test={run}",)), rescan_s=RESCAN_S)
    logs = DockerLogsSource(queue, store, backfill_s=None, inventory=inventory)
    consumer = RecordingConsumer(queue, store)
    (tmp_path / "p.yaml").write_text(PACK)
    [pack] = load_packs([tmp_path / "p.yaml"])
    shifter = FakeShifter()
    alerts = RecordingAlerts()
    executor = Executor(
        Policy(store, GuardConfig()),
        Journal(store),
        Fleet(inventory, weight_of=shifter.get_weight),
        shifter,  # type: ignore[arg-type]
        NoDocker(),  # type: ignore[arg-type]
        FakeVerifier(),  # type: ignore[arg-type]
        alerts,  # type: ignore[arg-type]
        {r.id: (r, pack.defaults) for r in pack.rules},
    )
    engine_alerts = EngineAlerts(inventory, lambda: alerts)  # type: ignore[arg-type,return-value]
    logs.start()
    inventory.start()
    key = {engine: f"{engine}/{name}" for engine, name in names.items()}
    try:
        wait(lambda: len(logs.followed()) == 3, 20, "three replicas followed")
        consumer.wait_for(lambda: len(consumer.messages(names["e1"])) >= 10, 20)

        engines["e1"].stop()  # live-restore: its replica prints on with nobody listening
        wait(lambda: not inventory.engine_states()["e1"].listed, 10, "e1 seen unreachable")
        engine_alerts.check(time.time())
        [down] = [a for a in alerts.fired if a.name == ENGINE_DOWN]
        assert down.labels["engine"] == "e1" and names["e1"] in down.annotations["summary"]
        assert executor.fleet.views()[key["e1"]].unknown

        assert executor.on_finding(finding(key["e1"], "svc", "slow")) is None  # no action on an unknown replica
        assert executor.refusals[-1][2] == "engine e1 unreachable: replica state unknown"
        opened = [executor.on_finding(finding(key[e], "svc", "slow")) for e in ("shared", "e2")]  # one fault each
        assert sum(i is not None for i in opened) == 1, executor.refusals  # e1 unknown + one drained = 2
        assert "unavailable" in executor.refusals[-1][2] or "serving" in executor.refusals[-1][2]
        wait(lambda: 0 in shifter.weights.values(), 5, "the drain")
        assert key["e1"] not in shifter.weights and len(shifter.history) == 1

        engines["e1"].start()
        wait(lambda: inventory.engine_states()["e1"].listed, 10, "e1 listed again")
        engine_alerts.check(time.time())
        [resolved] = [a for a in alerts.resolved if a.name == ENGINE_DOWN]
        assert resolved.labels == down.labels
        at_return = len(consumer.messages(names["e1"]))
        consumer.wait_for(lambda: len(consumer.messages(names["e1"])) > at_return + 10, 20)  # resumed

        containers["e1"].stop(timeout=5)  # its log is complete: compare with the engine's own
        truth = engine_log(containers["e1"])
        consumer.wait_for(lambda: len(consumer.messages(names["e1"])) >= len(truth), 20)
        time.sleep(0.5)  # a repeat would arrive after the count is reached
        assert consumer.messages(names["e1"]) == truth  # every line once, in order, across the outage
    finally:
        executor.shutdown()
        inventory.stop()
        logs.stop()
        consumer.stop()
        containers["shared"].remove(force=True)
