"""A replica whose protocol the watcher cannot verify is never restored on a guess.

The executor runs drain -> wait_available -> verify -> restore against a real HTTP server
replaying KServe's recorded answers (ready, but no version in the protocol). With nothing to
compare a smoke prediction against, or with a protocol label no adapter answers to, the incident
ends HELD: the replica keeps weight 0 and a human is alerted with the reason in one line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.conformance.test_protocol_conformance import RECORDED, Replay
from tests.unit.test_executor import PACK, TARGETS, Alerts, FakeFleet, FakeShifter, NoDocker
from watcher.actions.base import Replica
from watcher.actions.protocols import KServeV1, UnknownProtocolError, protocol_name
from watcher.actions.verify import Verifier
from watcher.journal import IncidentState, Journal
from watcher.model import Finding, Predicts
from watcher.playbook.checks import Verify, WaitAvailable
from watcher.playbook.executor import Executor, ExecutorConfig
from watcher.playbook.plan import Plan
from watcher.playbook.traffic import Drain, Restore
from watcher.policy import GuardConfig, Policy
from watcher.rulepack.compile import load_packs
from watcher.store import Store

TARGET = TARGETS[1]


class ProtocolFleet(FakeFleet):
    def __init__(self, shifter: FakeShifter, url: str, protocol: str) -> None:
        super().__init__(shifter)
        self.url, self.protocol = url, protocol

    def replica(self, key: str) -> Replica | None:
        base = super().replica(key)
        if base is None:
            return None
        return Replica(base.target, self.url.removeprefix("http://"), self.url, "lin", protocol=self.protocol)


@pytest.fixture
def kserve() -> Iterator[Replay]:
    replay = Replay()
    replay.answers = RECORDED[KServeV1]["serving"]
    yield replay
    replay.server.shutdown()
    replay.server.server_close()


def run_incident(tmp_path: Path, replay: Replay, protocol: str, model_repo: Path | None) -> tuple[str, int, Alerts]:
    (tmp_path / "p.yaml").write_text(PACK)
    [pack] = load_packs([tmp_path / "p.yaml"])
    store = Store(tmp_path / "w.db")
    shifter, alerts, journal = FakeShifter(), Alerts(), Journal(store)
    executor = Executor(
        Policy(store, GuardConfig()),
        journal,
        ProtocolFleet(shifter, f"http://127.0.0.1:{replay.port}", protocol),  # type: ignore[arg-type]
        shifter,
        NoDocker(),  # type: ignore[arg-type]
        Verifier(poll_s=0.02),
        alerts,
        {r.id: (r, pack.defaults) for r in pack.rules},
        ExecutorConfig(model_repo=model_repo),
    )
    plan = Plan([Drain(), WaitAvailable(timeout_s=1.0), Verify(), Restore()])
    iid = journal.open_incident(Finding(TARGET, "slow", Predicts.LATENCY, time.time()), plan, time.time())
    assert executor.recover() == [iid]
    executor.wait(10)
    executor.shutdown()
    incident = journal.incident(iid)
    assert incident is not None
    assert incident.state is IncidentState.HELD, (incident.state, incident.note)
    return incident.note, shifter.weights[TARGET.key], alerts


def test_a_protocol_without_versions_and_nothing_to_compare_stays_drained(tmp_path: Path, kserve: Replay) -> None:
    note, weight, alerts = run_incident(tmp_path, kserve, "kserve-v1", model_repo=None)
    assert weight == 0
    assert "cannot verify: protocol kserve-v1 reports no version" in note
    assert alerts.fired, "a held replica is a human's job: an alert goes out"


def test_a_missing_smoke_file_for_such_a_protocol_stays_drained(tmp_path: Path, kserve: Replay) -> None:
    repo = tmp_path / "models"
    (repo / "lin" / "2").mkdir(parents=True)  # a version folder, but no smoke.json in it
    note, weight, _ = run_incident(tmp_path, kserve, "kserve-v1", model_repo=repo)
    assert weight == 0 and "cannot verify" in note and "no smoke file" in note


def test_an_unknown_protocol_label_stays_drained_with_a_one_line_reason(tmp_path: Path, kserve: Replay) -> None:
    note, weight, alerts = run_incident(tmp_path, kserve, "grpc-magic", model_repo=None)
    assert weight == 0 and alerts.fired
    expected = "unknown watcher.protocol='grpc-magic'; allowed: kserve-v1, tfserving, torchserve, v2"
    assert f"container {TARGET.container}: {expected}" in note


def test_protocol_name_default_and_error() -> None:
    assert protocol_name("tfs-0", None) == protocol_name("tfs-0", "") == "tfserving"
    assert protocol_name("tfs-0", "v2") == "v2"
    with pytest.raises(UnknownProtocolError) as err:
        protocol_name("ml-0", "V2", "acme.protocol")
    assert str(err.value) == "container ml-0: unknown acme.protocol='V2'; allowed: kserve-v1, tfserving, torchserve, v2"
    assert "\n" not in str(err.value)


def test_the_protocol_label_reaches_the_replica_the_verifier_gets() -> None:
    """From Docker's labels (name from the settings) through the inventory to the actuators' Replica."""
    from types import SimpleNamespace

    from watcher.fleet import replica_of
    from watcher.inventory import LabelNames, WatchedContainer

    labels = {"watcher.upstream": "127.0.0.1:8080", "watcher.model": "lin", "acme/protocol": "torchserve"}
    attrs = {"State": {"Running": True, "StartedAt": "2026-01-01T00:00:00Z"}}
    container = SimpleNamespace(id="abc", name="ts-0", labels=labels, attrs=attrs)
    names = LabelNames(protocol="acme/protocol")
    replica = replica_of(WatchedContainer.of("local", container, names))
    assert replica is not None and replica.protocol == "torchserve"
    assert Verifier().adapter(replica).name == "torchserve"
    unlabelled = replica_of(WatchedContainer.of("local", container, LabelNames()))
    assert unlabelled is not None and unlabelled.protocol is None
    assert Verifier().adapter(unlabelled).name == "tfserving"
