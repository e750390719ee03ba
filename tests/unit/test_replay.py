"""Replay on a simulated clock: long gaps, untimed lines, bad steps and bad lines, as a user meets them.

Every test is bounded by ``pytest.mark.timeout``: a replay that ticks one second at a time across
a gap (the old clock) hangs, and a hang must fail, not stall the suite.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from watcher.cli import app
from watcher.engine import Engine
from watcher.model import Finding, Signal, Target, finding_to_json
from watcher.replay import read_jsonl, read_log_file, replay
from watcher.rulepack.compile import RuleSet, compile_packs
from watcher.rules import shipped_packs

RECORDING = Path(__file__).resolve().parents[2] / "recordings" / "leak-4mb.jsonl.gz"
DAY = 86400.0
runner = CliRunner()
PACK = """pack: t
rules:
  - id: oom-precursor
    match: {log: 'OOM when allocating'}
    when: {count: 2, within: 60s}
    for: 5s
    keep_firing_for: 30s
    predicts: oom
"""
OOM = "2024-05-01 10:00:0{}.000000: W x.cc:1] OP_REQUIRES failed: RESOURCE_EXHAUSTED: OOM when allocating tensor"


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return compile_packs(shipped_packs())


@pytest.fixture(scope="module")
def recorded() -> list[Signal]:
    return list(read_jsonl(RECORDING))


def shifted(signals: list[Signal], by: float) -> list[Signal]:
    return [dataclasses.replace(s, ts=s.ts + by) for s in signals]


def as_json(findings: list[Finding]) -> list[str]:
    return [json.dumps(finding_to_json(f), sort_keys=True) for f in findings]


def every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old clock: a tick at every grid point (no deadline is ever in the future)."""
    monkeypatch.setattr(Engine, "next_tick_at", lambda self, now: now)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("step", [1.0, 0.7])
def test_jumping_the_clock_gives_the_findings_of_ticking_every_step(
    shipped: RuleSet, recorded: list[Signal], step: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an incident, two quiet hours (windows expire, firing rules resolve), the incident again
    signals = recorded + shifted(recorded, 2 * 3600.0)
    jumped = replay(shipped, signals, step_s=step)
    every_step(monkeypatch)
    reference = replay(shipped, signals, step_s=step)
    assert as_json(jumped.findings) == as_json(reference.findings)
    assert any(f.resolved for f in reference.findings)  # the gap did make things happen


@pytest.mark.timeout(30)
def test_a_thirty_day_gap_finishes_in_seconds_with_the_findings_of_both_incidents(
    shipped: RuleSet, recorded: list[Signal]
) -> None:
    alone = replay(shipped, recorded).findings
    began = time.monotonic()
    both = replay(shipped, recorded + shifted(recorded, 30 * DAY)).findings
    assert time.monotonic() - began < 10
    end_of_first = recorded[-1].ts + DAY
    first = [f for f in both if f.ts < end_of_first]
    second = [f for f in both if f.ts >= end_of_first + 28 * DAY]
    fired = sorted((f.rule_id, f.target.key, f.ts) for f in alone if not f.resolved)
    assert sorted((f.rule_id, f.target.key, f.ts) for f in first if not f.resolved) == fired
    assert sorted((f.rule_id, f.target.key, f.ts - 30 * DAY) for f in second if not f.resolved) == fired
    # every finding of the first incident resolved during the quiet month, before the second began
    assert {(f.rule_id, f.target.key) for f in first if f.resolved} == {(r, k) for r, k, _ in fired}


@pytest.mark.timeout(30)
def test_for_and_keep_firing_for_deadlines_inside_a_long_gap(tmp_path: Path) -> None:
    pack = tmp_path / "p.yaml"
    pack.write_text(PACK)
    log = tmp_path / "tfs.log"
    late = "2024-05-31 10:00:00.000000: I x.cc:1] still alive"
    log.write_text(f"{OOM.format(0)}\n{OOM.format(1)}\n{late}\n")
    result = runner.invoke(app, ["replay", str(log), "--pack", str(pack), "--container", "tfs-1"])
    assert result.exit_code == 0, result.output
    findings = [json.loads(line) for line in result.stdout.splitlines()]
    start = 1714557600.0
    # fires when `for` (5 s) has elapsed after the second hit; the first hit leaves the 60 s window
    # at 60 s, and the rule resolves keep_firing_for (30 s) later: on the one-second grid
    assert [(f["resolved"], f["ts"] - start) for f in findings] == [(False, 6.0), (True, 90.0)]


@pytest.mark.timeout(30)
def test_untimed_lines_before_the_first_timestamp_take_it(tmp_path: Path) -> None:
    log = tmp_path / "tfs.log"
    later = "2024-05-01 10:00:20.000000: I x.cc:1] still alive"
    log.write_text(f"starting up\nno clock yet\n{OOM.format(0)}\nuntimed after\n{OOM.format(3)}\n{later}\n")
    records = list(read_log_file(log, Target("tfs-1")))
    assert [r.ts - 1714557600.0 for r in records] == [0.0, 0.0, 0.0, 0.0, 3.0, 20.0]
    pack = tmp_path / "p.yaml"
    pack.write_text(PACK)
    result = runner.invoke(app, ["replay", str(log), "--pack", str(pack), "--container", "tfs-1"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout.splitlines()[0])
    assert first["ts"] == 1714557608.0  # 2 hits by 10:00:03, then `for: 5s`: 2024, not 1970


def test_a_log_without_any_timestamp_is_replayed_at_the_start(tmp_path: Path) -> None:
    log = tmp_path / "plain.log"
    log.write_text("OOM when allocating a\nOOM when allocating b\n")
    assert [r.ts for r in read_log_file(log, Target("x"), start=5.0)] == [5.0, 5.0]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("step", ["0", "-1", "nan", "inf"])
def test_a_step_that_is_not_positive_is_a_usage_error(tmp_path: Path, step: str) -> None:
    log = tmp_path / "tfs.log"
    log.write_text(f"{OOM.format(0)}\n{OOM.format(5)}\n")
    result = runner.invoke(app, ["replay", str(log), f"--step={step}"])
    assert result.exit_code == 2
    assert "--step must be a positive number" in result.output and "Traceback" not in result.output


def test_the_library_refuses_a_step_that_is_not_positive(shipped: RuleSet, recorded: list[Signal]) -> None:
    with pytest.raises(ValueError, match="step must be a positive"):
        replay(shipped, recorded, step_s=0.0)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "Expecting property name"),
        ('{"type": "log", "target": "a", "message": "x"}', "missing field 'ts'"),
        ('{"type": "log", "ts": NaN, "target": "a", "message": "x"}', "ts must be a finite number"),
        ('{"type": "sample", "ts": 3, "series": "s", "value": "high"}', "could not convert"),
        ("[1, 2]", "a signal is a JSON object"),
    ],
)
def test_a_bad_recording_line_is_reported_as_file_line_why(tmp_path: Path, line: str, why: str) -> None:
    good = json.dumps({"type": "log", "ts": 1, "target": "a", "message": "x"})
    rec = tmp_path / "rec.jsonl"
    rec.write_text(f"{good}\n\n{line}\n")
    result = runner.invoke(app, ["replay", str(rec)])
    assert result.exit_code == 2
    [message] = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert message.startswith(f"error: {rec}:3: ") and why in message, message
    assert "Traceback" not in result.output


@pytest.mark.timeout(30)
def test_a_truncated_recording_is_reported_not_a_traceback(tmp_path: Path) -> None:
    good = json.dumps({"type": "log", "ts": 1, "target": "a", "message": "x"}) + "\n"
    whole = gzip.compress((good * 50).encode())
    rec = tmp_path / "rec.jsonl.gz"
    rec.write_bytes(whole[: len(whole) // 2])
    result = runner.invoke(app, ["replay", str(rec)])
    assert result.exit_code == 2
    assert f"error: {rec}:" in result.output and "cannot read" in result.output
    assert "Traceback" not in result.output
