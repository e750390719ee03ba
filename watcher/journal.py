"""The action journal: every remediation step written as intent before it runs, outcome after.

This is what makes remediation crash-safe. A watcher killed at any point finds, on restart, the
incidents that are not closed and the step that was in flight (intent without outcome); the
executor then checks the world (is the replica drained? did the container restart after the
intent?) and finishes or compensates, so no replica is left drained and forgotten and no restart
happens twice. It is also the timeline ``watcher incidents`` prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from watcher.model import Finding, finding_from_json, finding_to_json
from watcher.playbook.base import Step
from watcher.playbook.plan import Plan
from watcher.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL, service TEXT, rule_id TEXT NOT NULL,
    predicts TEXT NOT NULL, opened REAL NOT NULL, closed REAL, state TEXT NOT NULL, dry_run INTEGER NOT NULL,
    finding TEXT NOT NULL, plan TEXT NOT NULL, note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (state);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT, incident_id INTEGER NOT NULL REFERENCES incidents(id),
    idx INTEGER NOT NULL, name TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL,
    started REAL NOT NULL, ended REAL, detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS steps_incident ON steps (incident_id, idx);
"""


class IncidentState(StrEnum):
    RUNNING = "running"  # a plan is being carried out
    RESOLVED = "resolved"  # playbook finished, traffic restored
    HELD = "held"  # replica kept drained on purpose (failed verification, load failure, breaker) and alerted
    FAILED = "failed"  # a step failed and the replica was restored (nothing left changed)
    DRY_RUN = "dry_run"  # planned and journalled only
    REFUSED = "refused"  # a guard rail said no; the reason is in note


OPEN_STATES = (IncidentState.RUNNING,)


class StepStatus(StrEnum):
    INTENT = "intent"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class StepRecord:
    id: int
    idx: int
    name: str
    params: dict[str, Any]
    status: StepStatus
    started: float
    ended: float | None
    detail: str


@dataclass
class Incident:
    id: int
    target: str
    service: str | None
    rule_id: str
    predicts: str
    opened: float
    closed: float | None
    state: IncidentState
    dry_run: bool
    finding: Finding
    plan: Plan
    note: str
    version_before: str | None = None  # the version served when the incident opened (what verify expects back)
    steps: list[StepRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "service": self.service,
            "rule": self.rule_id,
            "predicts": self.predicts,
            "opened": self.opened,
            "closed": self.closed,
            "duration_s": None if self.closed is None else round(self.closed - self.opened, 3),
            "state": self.state.value,
            "dry_run": self.dry_run,
            "note": self.note,
            "finding": _finding_column(self.finding, self.version_before),
            "steps": [
                {
                    "idx": s.idx,
                    "name": s.name,
                    "params": s.params,
                    "status": s.status.value,
                    "started": s.started,
                    "ended": s.ended,
                    "duration_s": None if s.ended is None else round(s.ended - s.started, 3),
                    "detail": s.detail,
                }
                for s in self.steps
            ],
        }


def _finding_column(finding: Finding, version_before: str | None) -> dict[str, Any]:
    """The ``finding`` column: the finding's JSON with ``version_before`` inside, as the first version
    wrote it, so rows written by either version load in both."""
    return {**finding_to_json(finding), "version_before": version_before}


class JournalListener:
    """Told of each journal write after it committed: the metrics count incidents and actions as they
    happen (a count of rows grouped by current status would go down as incidents change state)."""

    def incident_opened(self, finding: Finding, state: IncidentState) -> None:
        """An incident was written; one opened already closed (dry run) is also :meth:`incident_ended`."""

    def incident_ended(self, state: IncidentState) -> None:
        """An incident reached a closed state."""

    def step_outcome(self, step: str, status: StepStatus) -> None:
        """A step's outcome (done, failed, skipped) was journalled."""


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.listeners: list[JournalListener] = []
        store.migrate(_SCHEMA)

    def open_incident(
        self,
        finding: Finding,
        plan: Plan,
        now: float,
        version_before: str | None = None,
        state: IncidentState = IncidentState.RUNNING,
        dry_run: bool = False,
        note: str = "",
    ) -> int:
        """The incident's target, service, rule and prediction are the finding's."""
        closed = None if state in OPEN_STATES else now
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT INTO incidents (target, service, rule_id, predicts, opened, closed, state, dry_run, finding,"
                " plan, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    finding.target.key,
                    finding.target.service,
                    finding.rule_id,
                    finding.predicts.value,
                    now,
                    closed,
                    state.value,
                    int(dry_run),
                    json.dumps(_finding_column(finding, version_before)),
                    json.dumps(plan.to_json()),
                    note,
                ),
            )
            incident_id = int(cur.lastrowid or 0)
        for listener in self.listeners:
            listener.incident_opened(finding, state)
            if closed is not None:
                listener.incident_ended(state)
        return incident_id

    def set_version_before(self, incident_id: int, version: str) -> None:
        """Record the version the replica served when the incident opened, learnt after it opened."""
        with self.store.transaction() as db:
            row = db.execute("SELECT finding FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if row is None:
                return
            doc = json.loads(row[0])
            doc["version_before"] = version
            db.execute("UPDATE incidents SET finding = ? WHERE id = ?", (json.dumps(doc), incident_id))

    def intent(self, incident_id: int, idx: int, step: Step, now: float) -> int:
        doc = step.to_json()
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT INTO steps (incident_id, idx, name, params, status, started) VALUES (?, ?, ?, ?, ?, ?)",
                (incident_id, idx, doc["name"], json.dumps(doc["params"]), StepStatus.INTENT.value, now),
            )
            return int(cur.lastrowid or 0)

    def outcome(self, step_id: int, status: StepStatus, now: float, detail: str = "") -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE steps SET status = ?, ended = ?, detail = ? WHERE id = ?", (status.value, now, detail, step_id)
            )
            row = db.execute("SELECT name FROM steps WHERE id = ?", (step_id,)).fetchone()
        if row is not None and status is not StepStatus.INTENT:
            for listener in self.listeners:
                listener.step_outcome(str(row[0]), status)

    def close(self, incident_id: int, state: IncidentState, now: float, note: str = "") -> None:
        with self.store.transaction() as db:
            db.execute(
                "UPDATE incidents SET state = ?, closed = ?, note = CASE WHEN ? = '' THEN note ELSE ? END WHERE id = ?",
                (state.value, now, note, note, incident_id),
            )
        if state not in OPEN_STATES:
            for listener in self.listeners:
                listener.incident_ended(state)

    def _steps(self, incident_id: int) -> list[StepRecord]:
        with self.store.reading() as db:
            rows = db.execute(
                "SELECT id, idx, name, params, status, started, ended, detail FROM steps WHERE incident_id = ?"
                " ORDER BY id",
                (incident_id,),
            ).fetchall()
        return [StepRecord(r[0], r[1], r[2], json.loads(r[3]), StepStatus(r[4]), r[5], r[6], r[7]) for r in rows]

    _COLUMNS = "id, target, service, rule_id, predicts, opened, closed, state, dry_run, finding, plan, note"

    def _load(self, where: str, args: tuple[Any, ...], limit: int) -> list[Incident]:
        with self.store.reading() as db:
            rows = db.execute(
                f"SELECT {self._COLUMNS} FROM incidents {where} ORDER BY id DESC LIMIT ?",  # noqa: S608 - fixed text
                (*args, limit),
            ).fetchall()
        out = []
        for r in reversed(rows):
            finding = json.loads(r[9])
            out.append(
                Incident(
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    r[6],
                    IncidentState(r[7]),
                    bool(r[8]),
                    finding_from_json(finding),
                    Plan.from_json(json.loads(r[10])),
                    r[11],
                    version_before=finding.get("version_before"),
                )
            )
        for incident in out:
            incident.steps = self._steps(incident.id)
        return out

    def incidents(self, open_only: bool = False, limit: int = 200) -> list[Incident]:
        if open_only:
            marks = ",".join("?" * len(OPEN_STATES))
            return self._load(f"WHERE state IN ({marks})", tuple(s.value for s in OPEN_STATES), limit)
        return self._load("", (), limit)

    def restart_duration(self, target: str, recent: int = 50) -> float | None:
        """How long the target's latest journalled restart took, from the restart (or recreate)
        step's start to the end of the wait for it to serve again; None when the last ``recent``
        incidents hold none. The policy compares a finding's ETA with it: a replica that cannot
        wait for a restart is drained first."""
        for incident in reversed(self.incidents(limit=recent)):
            if incident.target != target or incident.dry_run:
                continue
            started: float | None = None
            for step in reversed(incident.steps):  # the wait follows its restart: read back to front
                if step.name == "wait_available":
                    ok = step.status is StepStatus.DONE and step.ended is not None
                    started = step.ended if ok else None
                elif step.name in ("restart", "recreate") and started is not None:
                    if step.status is StepStatus.DONE:
                        return max(0.0, started - step.started)
                    started = None
        return None

    def verified_restart_after(self, target: str, since: float, recent: int = 50) -> float | None:
        """When the target was last restarted (or recreated) at or after ``since`` by an incident that
        ended resolved, i.e. verified serving again; None when the last ``recent`` incidents hold none.

        A finding refused while that incident ran is evidence about the process the restart
        replaced: the executor drops it rather than restart the new, verified process for it."""
        for incident in reversed(self.incidents(limit=recent)):
            if incident.target != target or incident.dry_run or incident.state is not IncidentState.RESOLVED:
                continue
            for step in incident.steps:
                if step.name in ("restart", "recreate") and step.status is StepStatus.DONE and step.started >= since:
                    return step.started
        return None

    def open_counts(self) -> dict[str, int]:
        """What is open now: incidents running, and replicas whose latest (not dry-run) incident
        ended held, i.e. kept drained until someone releases them."""
        with self.store.reading() as db:
            running = db.execute(
                f"SELECT COUNT(*) FROM incidents WHERE state IN ({','.join('?' * len(OPEN_STATES))})",  # noqa: S608
                tuple(s.value for s in OPEN_STATES),
            ).fetchone()[0]
            held = db.execute(
                "SELECT COUNT(*) FROM incidents WHERE state = ? AND id IN"
                " (SELECT MAX(id) FROM incidents WHERE dry_run = 0 GROUP BY target)",
                (IncidentState.HELD.value,),
            ).fetchone()[0]
        return {IncidentState.RUNNING.value: int(running), IncidentState.HELD.value: int(held)}

    def incident(self, incident_id: int) -> Incident | None:
        found = self._load("WHERE id = ?", (incident_id,), 1)
        return found[0] if found else None
