"""`watcher rules lint|schema|explain` and `watcher replay` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from watcher.cli import app

runner = CliRunner()

PACK = """pack: t
rules:
  - id: oom-precursor
    match: {log: 'OOM when allocating'}
    when: {count: 2, within: 60s}
    predicts: oom
  - id: loaded
    match: {log: 'Successfully loaded servable version'}
    lifecycle: model_loaded
  - id: oom-killed
    event: {kind: die, exit_codes: [137]}
    predicts: oom
"""
OOM = "2024-05-01 10:00:0{}.000000: W x.cc:1] OP_REQUIRES failed: RESOURCE_EXHAUSTED: OOM when allocating tensor"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lint_reports_every_error_with_position_and_fails(tmp_path: Path) -> None:
    bad = write(
        tmp_path, "bad.yaml", "pack: t\nrules:\n  - id: a\n    match: {log: x}\n    predicts: nope\n    colour: red\n"
    )
    result = runner.invoke(app, ["rules", "lint", str(bad)])
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{bad}:") for line in lines)
    assert any(":5:" in line and "predicts" in line for line in lines)
    assert any(":6:5:" in line and "colour" in line for line in lines)
    assert "Traceback" not in result.output


def test_lint_ok(tmp_path: Path) -> None:
    result = runner.invoke(app, ["rules", "lint", str(write(tmp_path, "p.yaml", PACK))])
    assert result.exit_code == 0, result.output


def test_schema_is_json_with_the_rule_kinds() -> None:
    result = runner.invoke(app, ["rules", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert "$defs" in schema or "definitions" in schema


def test_explain_gives_one_object_per_input_line_in_order(tmp_path: Path) -> None:
    pack = write(tmp_path, "p.yaml", PACK)
    log = write(
        tmp_path,
        "in.log",
        OOM.format(0) + "\nhealthy line\n"
        "2024-05-01 10:00:00.000000: I tensorflow_serving/core/loader_harness.cc:87] "
        "Successfully loaded servable version {name: m version: 2}\n",
    )
    result = runner.invoke(app, ["rules", "explain", str(pack), "--log", str(log)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows == [
        {"line": 1, "rules": ["oom-precursor"], "predicts": ["oom"], "lifecycle": []},
        {"line": 2, "rules": [], "predicts": [], "lifecycle": []},
        {"line": 3, "rules": ["loaded"], "predicts": [], "lifecycle": ["model_loaded"]},
    ]


def test_replay_of_a_plain_log_and_recorded_signals(tmp_path: Path) -> None:
    pack = write(tmp_path, "p.yaml", PACK)
    log = write(tmp_path, "tfs.log", "\n".join(OOM.format(s) for s in (0, 5)) + "\n")
    result = runner.invoke(app, ["replay", str(log), "--pack", str(pack), "--container", "tfs-1"])
    assert result.exit_code == 0, result.output
    [finding] = [json.loads(line) for line in result.stdout.splitlines()]
    assert finding["rule"] == "oom-precursor" and finding["container"] == "tfs-1"
    assert finding["ts"] == 1714557605.0  # simulated time: the second line's timestamp

    signals = write(
        tmp_path,
        "rec.jsonl",
        json.dumps({"type": "lifecycle", "ts": 100.0, "target": "tfs-2", "kind": "die", "exit_code": 137}) + "\n",
    )
    result = runner.invoke(app, ["replay", str(signals), "--pack", str(pack)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rule"] == "oom-killed"


def test_replay_bad_input_names_file_and_line(tmp_path: Path) -> None:
    pack = write(tmp_path, "p.yaml", PACK)
    signals = write(
        tmp_path, "rec.jsonl", '{"type": "log", "ts": 1, "target": "a", "message": "x"}\n{"type": "nope"}\n'
    )
    result = runner.invoke(app, ["replay", str(signals), "--pack", str(pack)])
    assert result.exit_code == 2
    assert f"{signals}:2:" in result.output and "Traceback" not in result.output


LOADED = (
    "2024-05-01 10:00:00.000000: I tensorflow_serving/core/loader_harness.cc:87] "
    "Successfully loaded servable version {name: m version: 2}"
)


def test_explain_splits_lines_at_newline_only(tmp_path: Path) -> None:
    """A progress bar's ``\\r`` inside a line keeps it one line (one row per line, as the watcher reads
    it); a CRLF ending is one ending."""
    pack = write(tmp_path, "p.yaml", PACK)
    log = tmp_path / "in.log"
    log.write_bytes(b"downloading 10%\rdownloading 100%\r" + LOADED.encode() + b"\r\nhealthy\n")
    result = runner.invoke(app, ["rules", "explain", str(pack), "--log", str(log)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 2]
    assert rows[0]["lifecycle"] == ["model_loaded"]  # the loaded message is in the line, not a line of its own


def test_explain_reads_standard_input_for_dash(tmp_path: Path) -> None:
    pack = write(tmp_path, "p.yaml", PACK)
    result = runner.invoke(app, ["rules", "explain", str(pack), "--log", "-"], input=(LOADED + "\nhealthy\n").encode())
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["lifecycle"] for r in rows] == [["model_loaded"], []]


def test_explain_missing_or_unreadable_log_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    pack = write(tmp_path, "p.yaml", PACK)
    for log in (tmp_path / "nope.log", tmp_path):
        result = runner.invoke(app, ["rules", "explain", str(pack), "--log", str(log)])
        assert result.exit_code == 2
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith(f"error: {log}: cannot read: ")
        assert "Traceback" not in result.output


def test_explain_cuts_an_endless_line_but_keeps_counting_lines(tmp_path: Path) -> None:
    pack = write(tmp_path, "p.yaml", PACK)
    log = tmp_path / "in.log"
    log.write_bytes(b"x" * 300_000 + b"\n" + LOADED.encode() + b"\n")
    result = runner.invoke(app, ["rules", "explain", str(pack), "--log", str(log)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["lifecycle"] for r in rows] == [[], ["model_loaded"]]
