"""The journal keeps intent and outcome of every step, and `watcher incidents` shows the timeline."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from watcher.cli import app
from watcher.journal import IncidentState, Journal, StepStatus
from watcher.model import Finding, Predicts, Target, finding_to_json
from watcher.playbook.container import Restart
from watcher.playbook.plan import Plan
from watcher.playbook.traffic import Drain
from watcher.store import Store

OOM = Finding(Target("tfs-1", service="m"), "oom", Predicts.OOM, 99.0)


def test_intent_outcome_and_reopening_the_store(tmp_path: Path) -> None:
    journal = Journal(Store(tmp_path / "w.db"))
    plan = Plan([Drain(), Restart()])
    iid = journal.open_incident(OOM, plan, 100.0, version_before="3")
    s1 = journal.intent(iid, 0, plan[0], 101.0)
    journal.outcome(s1, StepStatus.DONE, 102.0, "weight 0")
    journal.intent(iid, 1, plan[1], 103.0)  # the watcher dies here

    reopened = Journal(Store(tmp_path / "w.db"))
    [incident] = reopened.incidents(open_only=True)
    assert incident.id == iid and incident.state is IncidentState.RUNNING
    assert (incident.target, incident.service, incident.rule_id) == ("local/tfs-1", "m", "oom")
    assert incident.finding == OOM and incident.plan == plan and incident.version_before == "3"
    assert incident.to_json()["finding"] == {**finding_to_json(OOM), "version_before": "3"}  # as the API showed it
    assert [(s.name, s.status) for s in incident.steps] == [("drain", StepStatus.DONE), ("restart", StepStatus.INTENT)]
    reopened.close(iid, IncidentState.RESOLVED, 110.0)
    assert reopened.incidents(open_only=True) == []
    assert reopened.incident(iid).to_json()["duration_s"] == 10.0  # type: ignore[union-attr]


def test_incidents_command(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    journal = Journal(Store(db))
    iid = journal.open_incident(OOM, Plan([Drain()]), 100.0)
    sid = journal.intent(iid, 0, Drain(), 100.5)
    journal.outcome(sid, StepStatus.DONE, 101.0, "weight 0")
    journal.close(iid, IncidentState.HELD, 105.0, "kept drained: version mismatch")
    runner = CliRunner()
    text = runner.invoke(app, ["incidents", "--store", str(db)])
    assert text.exit_code == 0, text.output
    assert "local/tfs-1 oom (oom) -> held [5.0s]" in text.stdout and "version mismatch" in text.stdout
    as_json = runner.invoke(app, ["incidents", "--store", str(db), "--json"])
    [doc] = json.loads(as_json.stdout)
    assert doc["state"] == "held" and doc["steps"][0]["detail"] == "weight 0"
    missing = runner.invoke(app, ["incidents", "--store", str(tmp_path / "sub" / "nope.db")])
    assert missing.exit_code == 2 and f"no store at {tmp_path / 'sub' / 'nope.db'}" in missing.output


def test_incidents_command_creates_nothing(tmp_path: Path) -> None:
    """Read-only: neither a missing store, nor its directory, nor the schema of a foreign SQLite file."""
    runner = CliRunner()
    assert runner.invoke(app, ["incidents", "--store", str(tmp_path / "d" / "w.db")]).exit_code == 2
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    result = runner.invoke(app, ["incidents", "--store", str(empty)])
    assert result.exit_code == 2 and "not a watcher store" in result.output
    assert empty.read_bytes() == b"" and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
    db = tmp_path / "w.db"
    writer = Store(db)
    Journal(writer).open_incident(OOM, Plan([Drain()]), 100.0)
    writer.close()  # the watcher stopped: its WAL is checkpointed into the file
    before = sorted(p.name for p in tmp_path.iterdir()), db.stat().st_mtime_ns, db.read_bytes()
    listed = runner.invoke(app, ["incidents", "--store", str(db)])
    assert listed.exit_code == 0 and "local/tfs-1 oom" in listed.stdout
    assert (sorted(p.name for p in tmp_path.iterdir()), db.stat().st_mtime_ns, db.read_bytes()) == before
