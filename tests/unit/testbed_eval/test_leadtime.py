"""Lead-time evaluation: the scoring rules on constructed findings, and the shipped recordings."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from rich.console import Console

from testbed.eval import leadtime
from testbed.eval.leadtime import ALL, Failure, evaluate, read_recording, score_findings
from watcher.model import Finding, Predicts, Target
from watcher.replay import ReplayInputError
from watcher.rulepack.compile import load_packs
from watcher.rules import SHIPPED_RULES

RECORDINGS = Path(__file__).resolve().parents[3] / "recordings"
LEAKS = ("leak-4mb", "leak-8mb")
ALL_RECORDINGS = (*LEAKS, "error-ramp", "latency-creep", "healthy-noise")


def _finding(container: str, ts: float, rule: str = "r", pack: str = "p", resolved: bool = False) -> Finding:
    return Finding(Target(container), rule, Predicts.OOM, ts, pack=pack, resolved=resolved)


def test_lead_is_failure_minus_earliest_finding_within_the_horizon() -> None:
    failures = [Failure("a", 1000.0, "oom")]
    findings = [
        _finding("a", 300.0),  # beyond the 600 s horizon: not a prediction of this failure
        _finding("a", 940.0),
        _finding("a", 970.0),
        _finding("a", 1000.0),  # at the failure: a confirmation, not a prediction
        _finding("b", 900.0),  # another replica
        _finding("a", 950.0, resolved=True),  # resolutions are not findings
    ]
    score = score_findings(findings, failures, healthy=[(0.0, 500.0)], horizon_s=600.0)["r"]
    assert score.caught == 1 and score.failures == 1
    assert score.median_lead_s == pytest.approx(60.0)
    assert score.worst_lead_s == pytest.approx(60.0)
    assert score.findings == 5
    assert score.false_findings == 1  # the one at 300 s, inside the healthy stretch
    assert score.false_per_hour == pytest.approx(1 * 3600 / 500)


def test_missed_failure_and_grouping_by_pack_and_all() -> None:
    failures = [Failure("a", 100.0, "oom"), Failure("b", 200.0, "crash")]
    findings = [_finding("a", 90.0, rule="x", pack="p1"), _finding("b", 150.0, rule="y", pack="p2")]
    by_rule = score_findings(findings, failures, [], group="rule")
    assert (by_rule["x"].caught, by_rule["y"].caught) == (1, 1)
    assert by_rule["x"].false_per_hour is None  # no healthy time to measure on
    every = score_findings(findings, failures, [], group="all")[ALL]
    assert every.caught == 2 and sorted(every.leads) == [10.0, 50.0]
    assert every.median_lead_s == pytest.approx(30.0) and every.worst_lead_s == pytest.approx(10.0)
    assert set(score_findings(findings, failures, [], group="pack")) == {"p1 (pack)", "p2 (pack)"}


def test_recording_reader_takes_meta_and_gzip_and_names_bad_lines(tmp_path: Path) -> None:
    lines = [
        {"type": "meta", "failures": [{"target": "t", "ts": 20, "kind": "oom"}], "healthy": [[0, 10]]},
        {"type": "sample", "ts": 1, "target": "t", "series": "memory_working_set_bytes", "value": 5},
        {"type": "lifecycle", "ts": 20, "target": "t", "kind": "oom"},
    ]
    path = tmp_path / "r.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n")
    rec = read_recording(path)
    assert rec.name == "r" and len(rec.signals) == 2 and rec.healthy_s == 10.0
    assert rec.failures == [Failure("t", 20.0, "oom")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(lines[0]) + "\n" + '{"type": "nonsense", "ts": 1}\n')
    with pytest.raises(ReplayInputError, match=r"bad.jsonl:2: "):
        read_recording(bad)


def test_main_prints_tables_and_refuses_missing_files(tmp_path: Path) -> None:
    console = Console(record=True, width=160)
    out = tmp_path / "report.json"
    assert leadtime.main([RECORDINGS / "leak-8mb.jsonl.gz"], None, json_out=out, console=console) == 0
    text = console.export_text()
    assert "leak-8mb" in text and "all packs" in text and "median lead" in text
    assert json.loads(out.read_text())["overall"][ALL]["caught"] == 1
    assert leadtime.main([tmp_path / "nope.jsonl"], None, console=Console(record=True)) == 2


@pytest.fixture(scope="module")
def shipped_report() -> leadtime.Report:
    packs = load_packs([SHIPPED_RULES])
    return evaluate([RECORDINGS / f"{n}.jsonl.gz" for n in ALL_RECORDINGS], packs)


def test_shipped_recordings_are_small_and_carry_ground_truth() -> None:
    for name in ALL_RECORDINGS:
        path = RECORDINGS / f"{name}.jsonl.gz"
        assert path.stat().st_size < 1_000_000, name
        rec = read_recording(path)
        assert rec.healthy_s > 30, name
        series = {getattr(s, "series", None) for s in rec.signals}
        assert {"memory_working_set_bytes", "memory_limit_bytes", "error_ratio"} <= series, name
    for name in LEAKS:
        assert [f.kind for f in read_recording(RECORDINGS / f"{name}.jsonl.gz").failures] == ["oom"]
    assert read_recording(RECORDINGS / "healthy-noise.jsonl.gz").failures == []


def test_leak_ooms_are_caught_with_positive_lead_time(shipped_report: leadtime.Report) -> None:
    by_name = {r.name: r for r in shipped_report.recordings}
    for name in LEAKS:
        score = by_name[name].scores[ALL]
        print(f"{name}: caught {score.caught}/{score.failures}, leads {score.leads}")
        assert score.failures == 1 and score.caught == 1, name
        assert score.worst_lead_s is not None and score.worst_lead_s > 0, name


def test_false_finding_rate_on_healthy_noise_is_reported(shipped_report: leadtime.Report) -> None:
    noise = next(r for r in shipped_report.recordings if r.name == "healthy-noise")
    score = noise.scores[ALL]
    assert noise.healthy_s >= 120
    assert score.false_per_hour is not None
    rate = score.false_per_hour
    print(f"healthy-noise: {score.false_findings} false findings in {noise.healthy_s:.0f} s = {rate:.1f}/h")
    for rec in shipped_report.recordings:
        for key, s in sorted(rec.scores.items()):
            print(
                f"{rec.name:14} {key:40} caught {s.caught}/{s.failures} median {s.median_lead_s} "
                f"worst {s.worst_lead_s} false/h {s.false_per_hour}"
            )
    # The shipped packs must not cry wolf on healthy replicas that merely log routine noise.
    assert score.false_findings == 0
