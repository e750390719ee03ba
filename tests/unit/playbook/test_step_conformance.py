"""Every registered step kind behaves as the executor and the journal assume (a conformance suite).

Walks the registry, so a new kind is checked without touching this file: its JSON survives the
journal, its kind cannot be registered twice, and a watcher killed after journalling its intent
finishes the incident on the next start without repeating what must not be repeated (a restart
whose container already started after the intent). Also: a journal row written by the first
version (finding dict with ``version_before`` inside, plan as ``[{"name", "params"}]``) resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_executor import PACK, TARGETS, Alerts, FakeFleet, FakeShifter, FakeVerifier
from watcher.actions.base import Replica
from watcher.actions.verify import Verifier
from watcher.journal import IncidentState, Journal, StepStatus
from watcher.model import Finding, Predicts, Target, finding_to_json
from watcher.playbook.base import Step
from watcher.playbook.executor import Executor
from watcher.playbook.plan import Plan, UnreadableStep
from watcher.playbook.registry import REGISTRY, DuplicateStepKind, StepRegistry, step_from_json
from watcher.policy import GuardConfig, Policy
from watcher.rulepack.compile import load_packs
from watcher.store import Store
from watcher.timefmt import format_rfc3339

KINDS = sorted(REGISTRY.kinds())
TARGET = TARGETS[1]


class FakeDocker:
    """Docker as the restart steps see it: when the container last started, and what was done to it."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.calls: list[str] = []

    def restart(self, target: Target, stop_timeout_s: float) -> dict[str, Any]:
        self.calls.append("restart")
        self.started_at = time.time()
        return {}

    def recreate(self, target: Target, stop_timeout_s: float = 10.0) -> dict[str, Any]:
        self.calls.append("recreate")
        self.started_at = time.time()
        return {}

    def state(self, target: Target) -> dict[str, Any]:
        return {"started_at": format_rfc3339(self.started_at)}


class HealthyModel(FakeVerifier):
    """Serves version 2, loads fine, answers the smoke prediction."""

    expected_version = staticmethod(Verifier.expected_version)  # the real rule: pinned, repo, else before

    def wait_available(self, replica: Replica, timeout_s: float, version: str | None = None) -> str:
        return "2"

    def load_failed(self, replica: Replica) -> str | None:
        return None

    def reports_versions(self, replica: Replica) -> bool:
        return True

    def smoke(self, replica: Replica, version: str, smoke_dir: Path) -> None:
        return None


def executor_on(tmp_path: Path, docker: FakeDocker) -> tuple[Executor, Journal, FakeShifter, Alerts]:
    """A watcher started on the store a killed one left behind."""
    (tmp_path / "p.yaml").write_text(PACK)
    [pack] = load_packs([tmp_path / "p.yaml"])
    store = Store(tmp_path / "w.db")
    shifter, alerts, journal = FakeShifter(), Alerts(), Journal(store)
    executor = Executor(
        Policy(store, GuardConfig()),
        journal,
        FakeFleet(shifter),  # type: ignore[arg-type]
        shifter,
        docker,
        HealthyModel(),  # type: ignore[arg-type]
        alerts,
        {r.id: (r, pack.defaults) for r in pack.rules},
    )
    return executor, journal, shifter, alerts


def killed_at_intent(tmp_path: Path, step: Step, opened: float) -> int:
    """A watcher journalled the incident and the intent of its one step, then died."""
    journal = Journal(Store(tmp_path / "w.db"))
    finding = Finding(TARGET, "slow", Predicts.LATENCY, opened)
    iid = journal.open_incident(finding, Plan([step]), opened, version_before="2")
    journal.intent(iid, 0, step, opened + 1.0)
    journal.store.close()
    return iid


@pytest.mark.parametrize("kind", KINDS)
def test_json_round_trip(kind: str) -> None:
    cls = REGISTRY.get(kind)
    step = cls._example()
    doc = json.loads(json.dumps(step.to_json()))  # through text, as the journal stores it
    assert doc["name"] == kind and set(doc) == {"name", "params"}
    assert set(doc["params"]) == set(cls.model_fields), "every param reaches the journal"
    assert step_from_json(doc) == step
    assert Plan.from_json(json.loads(json.dumps(Plan([step, step]).to_json()))) == Plan([step, step])


@pytest.mark.parametrize("kind", KINDS)
def test_the_registry_refuses_a_second_class_of_the_same_kind(kind: str) -> None:
    cls = REGISTRY.get(kind)
    twin = type(f"Twin{cls.__name__}", (cls,), {"__module__": __name__})
    with pytest.raises(DuplicateStepKind):
        REGISTRY.register(twin)
    assert REGISTRY.get(kind) is cls
    fresh = StepRegistry()
    fresh.register(cls)
    with pytest.raises(DuplicateStepKind):
        fresh.register(twin)


@pytest.mark.parametrize("kind", KINDS)
def test_resume_after_a_kill_at_intent_finishes_the_incident(kind: str, tmp_path: Path) -> None:
    """The container has not started since the incident opened: every step (re)runs, exactly once."""
    step = REGISTRY.get(kind)._example()
    opened = time.time() - 10.0
    iid = killed_at_intent(tmp_path, step, opened)
    docker = FakeDocker(started_at=opened - 100.0)
    executor, journal, _shifter, _alerts = executor_on(tmp_path, docker)
    assert executor.recover() == [iid]
    executor.wait(10)
    executor.shutdown()
    incident = journal.incident(iid)
    assert incident is not None
    assert incident.state is (IncidentState.HELD if step.ends_held else IncidentState.RESOLVED), incident.note
    [record] = incident.steps  # the journalled intent was finished, not a second one written
    assert record.status is StepStatus.DONE and record.name == kind
    assert docker.calls == ([kind] if step.restarts else [])


@pytest.mark.parametrize("kind", [k for k in KINDS if REGISTRY.get(k).restarts])
def test_a_restart_that_happened_before_the_kill_is_not_repeated(kind: str, tmp_path: Path) -> None:
    step = REGISTRY.get(kind)._example()
    opened = time.time() - 10.0
    iid = killed_at_intent(tmp_path, step, opened)
    docker = FakeDocker(started_at=opened + 2.0)  # after the intent: the restart went through
    executor, journal, _shifter, _alerts = executor_on(tmp_path, docker)
    executor.recover()
    executor.wait(10)
    executor.shutdown()
    incident = journal.incident(iid)
    assert incident is not None and incident.state is IncidentState.RESOLVED
    assert docker.calls == []
    assert [(s.status, s.detail) for s in incident.steps] == [(StepStatus.DONE, "completed before a watcher restart")]


def test_a_journal_row_of_the_first_version_resumes(tmp_path: Path) -> None:
    opened = time.time() - 30.0
    finding = {
        **finding_to_json(Finding(TARGET, "slow", Predicts.LATENCY, opened, evidence=("upstream timed out",))),
        "version_before": "2",
    }
    plan = [
        {"name": "drain", "params": {}},
        {"name": "wait_idle", "params": {"settle_s": 0.0, "timeout_s": 1.0}},
        {"name": "restart", "params": {"stop_timeout_s": 10.0}},
        {"name": "wait_available", "params": {"timeout_s": 60.0}},
        {"name": "verify", "params": {"settle_s": 0.0}},
        {"name": "restore", "params": {}},
    ]
    store = Store(tmp_path / "w.db")
    Journal(store)  # creates the tables
    with store.transaction() as db:
        iid = db.execute(
            "INSERT INTO incidents (target, service, rule_id, predicts, opened, closed, state, dry_run, finding,"
            " plan, note) VALUES (?, ?, ?, ?, ?, NULL, 'running', 0, ?, ?, '')",
            (TARGET.key, "m", "slow", "latency", opened, json.dumps(finding), json.dumps(plan)),
        ).lastrowid
        for idx, status, started in ((0, "done", opened + 1), (1, "done", opened + 2), (2, "intent", opened + 3)):
            db.execute(
                "INSERT INTO steps (incident_id, idx, name, params, status, started) VALUES (?, ?, ?, ?, ?, ?)",
                (iid, idx, plan[idx]["name"], json.dumps(plan[idx]["params"]), status, started),
            )
    store.close()

    docker = FakeDocker(started_at=opened + 4.0)  # the restart in flight went through before the kill
    executor, journal, shifter, _alerts = executor_on(tmp_path, docker)
    assert executor.recover() == [iid]
    executor.wait(10)
    executor.shutdown()
    incident = journal.incident(iid or -1)
    assert incident is not None
    assert incident.state is IncidentState.RESOLVED, incident.note
    assert incident.plan.to_json() == plan and incident.version_before == "2"
    assert incident.to_json()["finding"] == finding
    assert docker.calls == []
    details = [s.detail for s in incident.steps]
    assert details[2] == "completed before a watcher restart"
    assert "serving version 2 (expected 2)" in details[4]  # version_before read from inside the finding
    assert shifter.history == [(TARGET.key, 2)]


def test_an_unknown_step_in_the_journal_fails_the_incident_and_restores(tmp_path: Path) -> None:
    """A row from a newer watcher still lists, and what this version cannot name is not done."""
    step = UnreadableStep(raw={"name": "teleport", "params": {"to": "mars"}}, error="unknown step 'teleport'")
    iid = killed_at_intent(tmp_path, step, time.time() - 10.0)
    executor, journal, shifter, _alerts = executor_on(tmp_path, FakeDocker(0.0))
    loaded = journal.incident(iid)
    assert loaded is not None and loaded.plan.to_json() == [{"name": "teleport", "params": {"to": "mars"}}]
    executor.recover()
    executor.wait(10)
    executor.shutdown()
    incident = journal.incident(iid)
    assert incident is not None and incident.state is IncidentState.FAILED
    assert incident.note == "unknown step 'teleport'" and shifter.history == [(TARGET.key, 2)]
