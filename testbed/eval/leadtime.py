"""``python -m testbed eval leadtime``: how early the rule packs see a failure coming, on recorded testbed runs.

A recording (``scripts/record_testbed.py``) is the replay format of :mod:`watcher.replay` — JSON
lines of ``log``, ``lifecycle`` and ``sample`` signals, optionally gzipped — headed by one ``meta``
line with the ground truth::

    {"type": "meta", "failures": [{"target": "tfsim-1", "ts": 1714557642.5, "kind": "oom"}],
     "faults": [...], "healthy": [[start, end], ...]}

Every recording is replayed through one fresh engine on a simulated clock. Then, per detector
(rule), per pack and for all packs together:

* **caught**: failures for which the detector produced a finding about the failing target before
  the failure and at most ``horizon_s`` before it (a finding at or after the failure is a
  confirmation, not a prediction);
* **lead time**: failure time minus the earliest such finding; the median and the worst (shortest)
  over the caught failures;
* **false findings per hour**: findings (on any target) that start inside a ``healthy`` stretch,
  per hour of healthy recording. Healthy stretches are where no replica had a fault, so every
  finding there is a false alarm.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from watcher.model import Finding, Signal
from watcher.replay import ReplayInputError, read_jsonl, replay
from watcher.rulepack.schema import RulePack

DEFAULT_HORIZON_S = 600.0
ALL = "all packs"


@dataclass(frozen=True, slots=True)
class Failure:
    target: str  # container name
    ts: float
    kind: str  # "oom", "crash" or "unhealthy"
    source: str = ""  # "docker" (an event) or "slo" (the client saw the objective broken)


@dataclass(frozen=True)
class Recording:
    name: str
    signals: list[Signal]
    failures: list[Failure]
    healthy: list[tuple[float, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def start(self) -> float:
        return min((s.ts for s in self.signals), default=0.0)

    @property
    def end(self) -> float:
        return max((s.ts for s in self.signals), default=0.0)

    @property
    def healthy_s(self) -> float:
        return sum(max(0.0, b - a) for a, b in self.healthy)


def _recording_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def _parse_meta(obj: dict[str, Any]) -> tuple[list[Failure], list[tuple[float, float]]]:
    failures = [
        Failure(str(f["target"]), float(f["ts"]), str(f.get("kind", "crash")), str(f.get("source", "")))
        for f in obj.get("failures") or []
    ]
    healthy = []
    for span in obj.get("healthy") or []:
        a, b = float(span[0]), float(span[1])
        if b < a:
            raise ValueError(f"healthy stretch ends before it starts: {span}")
        healthy.append((a, b))
    return sorted(failures, key=lambda f: f.ts), healthy


def read_recording(path: Path) -> Recording:
    """A recording with its ``meta`` header (``.jsonl`` or ``.jsonl.gz``); errors name file and line."""
    failures: list[Failure] = []
    healthy: list[tuple[float, float]] = []
    meta: dict[str, Any] = {}

    def on_meta(obj: dict[str, Any]) -> None:
        found, spans = _parse_meta(obj)
        failures.extend(found)
        healthy.extend(spans)
        meta.update(obj)

    signals: list[Signal] = list(read_jsonl(path, on_meta))
    return Recording(_recording_name(path), signals, sorted(failures, key=lambda x: x.ts), healthy, meta)


# ------------------------------------------------------------------------------------- scoring
@dataclass
class Score:
    """One detector (or pack, or all packs) on one or more recordings."""

    detector: str
    failures: int = 0
    leads: list[float] = field(default_factory=list)  # one per caught failure, seconds
    false_findings: int = 0
    healthy_s: float = 0.0
    findings: int = 0

    @property
    def caught(self) -> int:
        return len(self.leads)

    @property
    def median_lead_s(self) -> float | None:
        return statistics.median(self.leads) if self.leads else None

    @property
    def worst_lead_s(self) -> float | None:
        return min(self.leads) if self.leads else None

    @property
    def false_per_hour(self) -> float | None:
        return self.false_findings * 3600.0 / self.healthy_s if self.healthy_s > 0 else None

    def merge(self, other: Score) -> None:
        self.failures += other.failures
        self.leads.extend(other.leads)
        self.false_findings += other.false_findings
        self.healthy_s += other.healthy_s
        self.findings += other.findings

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 2)

        return {
            "detector": self.detector,
            "failures": self.failures,
            "caught": self.caught,
            "median_lead_s": r(self.median_lead_s),
            "worst_lead_s": r(self.worst_lead_s),
            "leads_s": [round(x, 2) for x in self.leads],
            "findings": self.findings,
            "false_findings": self.false_findings,
            "healthy_s": round(self.healthy_s, 1),
            "false_per_hour": r(self.false_per_hour),
        }


@dataclass
class RecordingReport:
    name: str
    duration_s: float
    failures: list[Failure]
    healthy_s: float
    findings: list[Finding]
    scores: dict[str, Score]  # detector (rule id), "<pack> (pack)", ALL


@dataclass
class Report:
    horizon_s: float
    recordings: list[RecordingReport]

    def overall(self) -> dict[str, Score]:
        """Each detector's scores summed over every recording (healthy time counts everywhere)."""
        total_healthy = sum(r.healthy_s for r in self.recordings)
        out: dict[str, Score] = {}
        for rec in self.recordings:
            for key in rec.scores:
                out.setdefault(key, Score(key))
        for rec in self.recordings:
            for key, score in out.items():
                mine = rec.scores.get(key)
                if mine is not None:
                    score.merge(mine)
                else:  # silent on this recording: its failures were missed, its healthy time clean
                    score.failures += len(rec.failures)
        for score in out.values():
            score.healthy_s = total_healthy
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "horizon_s": self.horizon_s,
            "recordings": [
                {
                    "name": r.name,
                    "duration_s": round(r.duration_s, 1),
                    "failures": [_failure_json(f) for f in r.failures],
                    "healthy_s": round(r.healthy_s, 1),
                    "scores": {k: s.to_json() for k, s in r.scores.items()},
                }
                for r in self.recordings
            ],
            "overall": {k: s.to_json() for k, s in self.overall().items()},
        }


def _failure_json(f: Failure) -> dict[str, Any]:
    return {"target": f.target, "ts": f.ts, "kind": f.kind, "source": f.source}


def _in_healthy(ts: float, healthy: Sequence[tuple[float, float]]) -> bool:
    return any(a <= ts <= b for a, b in healthy)


def score_findings(
    findings: Iterable[Finding],
    failures: Sequence[Failure],
    healthy: Sequence[tuple[float, float]],
    horizon_s: float = DEFAULT_HORIZON_S,
    group: str = "rule",
) -> dict[str, Score]:
    """Scores keyed by rule id (``group="rule"``), ``"<pack> (pack)"`` (``"pack"``) or :data:`ALL`."""
    healthy_s = sum(max(0.0, b - a) for a, b in healthy)
    by_key: dict[str, list[Finding]] = {}
    for f in findings:
        if f.resolved:
            continue
        key = f.rule_id if group == "rule" else f"{f.pack} (pack)" if group == "pack" else ALL
        by_key.setdefault(key, []).append(f)
    scores: dict[str, Score] = {}
    for key, mine in by_key.items():
        score = Score(key, failures=len(failures), healthy_s=healthy_s, findings=len(mine))
        for failure in failures:
            before = [f.ts for f in mine if f.target.container == failure.target and 0 < failure.ts - f.ts <= horizon_s]
            if before:
                score.leads.append(failure.ts - min(before))
        score.false_findings = sum(1 for f in mine if _in_healthy(f.ts, healthy))
        scores[key] = score
    return scores


def evaluate_recording(
    recording: Recording, packs: Sequence[RulePack], horizon_s: float = DEFAULT_HORIZON_S, step_s: float = 1.0
) -> RecordingReport:
    result = replay(packs, recording.signals, step_s=step_s)
    scores: dict[str, Score] = {}
    for group in ("rule", "pack", "all"):
        scores.update(score_findings(result.findings, recording.failures, recording.healthy, horizon_s, group))
    if ALL not in scores:
        scores[ALL] = Score(ALL, failures=len(recording.failures), healthy_s=recording.healthy_s)
    return RecordingReport(
        name=recording.name,
        duration_s=recording.end - recording.start,
        failures=list(recording.failures),
        healthy_s=recording.healthy_s,
        findings=result.findings,
        scores=scores,
    )


def evaluate(
    recordings: Sequence[Path | Recording],
    packs: Sequence[RulePack],
    horizon_s: float = DEFAULT_HORIZON_S,
    step_s: float = 1.0,
) -> Report:
    """Replay each recording through a fresh engine with these packs and score its findings."""
    reports = []
    for rec in recordings:
        recording = rec if isinstance(rec, Recording) else read_recording(rec)
        reports.append(evaluate_recording(recording, packs, horizon_s, step_s))
    return Report(horizon_s, reports)


# ------------------------------------------------------------------------------------- output
def _fmt(x: float | None, unit: str = "s") -> str:
    return "-" if x is None else f"{x:.1f}{unit}" if unit else f"{x:.1f}"


def _order(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    rules = sorted(k for k in keys if k != ALL and not k.endswith(" (pack)"))
    packs = sorted(k for k in keys if k.endswith(" (pack)"))
    return rules + packs + ([ALL] if ALL in keys else [])


def _add_rows(table: Table, label: str, scores: dict[str, Score]) -> None:
    for i, key in enumerate(_order(scores)):
        s = scores[key]
        style = "bold" if key == ALL else "italic" if key.endswith(" (pack)") else ""
        table.add_row(
            label if i == 0 else "",
            key,
            f"{s.caught}/{s.failures}",
            _fmt(s.median_lead_s),
            _fmt(s.worst_lead_s),
            str(s.findings),
            str(s.false_findings),
            _fmt(s.false_per_hour, ""),
            style=style,
        )


def tables(report: Report) -> list[Table]:
    per = Table(title=f"lead time per recording (horizon {report.horizon_s:g} s)", title_justify="left")
    for col in ("recording", "detector", "caught", "median lead", "worst lead", "findings", "false", "false/h"):
        per.add_column(col, justify="left" if col in ("recording", "detector") else "right")
    for rec in report.recordings:
        kinds = ", ".join(sorted({f.kind for f in rec.failures})) or "no failure"
        label = f"{rec.name}\n{kinds}, {rec.healthy_s:.0f} s healthy"
        _add_rows(per, label, rec.scores)
        per.add_section()
    total = Table(title="all recordings", title_justify="left")
    for col in ("", "detector", "caught", "median lead", "worst lead", "findings", "false", "false/h"):
        total.add_column(col, justify="left" if col in ("", "detector") else "right")
    healthy = sum(r.healthy_s for r in report.recordings)
    _add_rows(total, f"{len(report.recordings)} recordings\n{healthy / 60:.1f} min healthy", report.overall())
    return [per, total]


def main(
    recordings: list[Path],
    packs: list[Path] | None = None,
    horizon_s: float = DEFAULT_HORIZON_S,
    json_out: Path | None = None,
    console: Console | None = None,
) -> int:
    """``python -m testbed eval leadtime RECORDING... [--pack P]``: replay, score, print the tables.

    Returns 0, or 2 when an input cannot be read (the message names file and line).
    """
    from watcher.rulepack.compile import load_packs
    from watcher.rulepack.loader import RulePackError
    from watcher.rules import SHIPPED_RULES

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=150)  # pipes and CI logs: do not squeeze the table to 80 columns
    missing = [p for p in recordings if not p.is_file()]
    if not recordings or missing:
        console.print(f"error: no such recording: {', '.join(map(str, missing)) or '(none given)'}", style="red")
        return 2
    try:
        loaded = load_packs(packs or [SHIPPED_RULES])
        report = evaluate(recordings, loaded, horizon_s=horizon_s)
    except (RulePackError, ReplayInputError) as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 2
    for table in tables(report):
        console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0


def iter_series(recording: Recording, series: str, target: str | None = None) -> Iterator[tuple[str, float, float]]:
    """(container, ts, value) of one recorded series (for plots)."""
    from watcher.model import Sample

    for s in recording.signals:
        if (
            isinstance(s, Sample)
            and s.series == series
            and s.target is not None
            and (target is None or s.target.container == target)
        ):
            yield s.target.container, s.ts, s.value
