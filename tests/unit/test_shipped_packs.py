"""The shipped rule packs are valid together, every rule is tested, and the tests pass.

Why here and not only in CI's ``watcher rules test``: a pack edit that breaks a rule test, an
id clash between packs, or a schema file left stale must fail the ordinary unit-test run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.rulepack.compile import lint, load_packs
from watcher.rulepack.schema import MatchRule, schema_json
from watcher.rulepack.testing import expand_values, load_rule_test_file, main, run_rule_tests
from watcher.rules import SHIPPED_RULES

ROOT = Path(__file__).resolve().parents[2]
RULES = SHIPPED_RULES
TESTS = RULES / "tests"
PACKS = sorted(RULES.glob("*.yaml"))
SCHEMA_FILE = RULES / "schema" / "rulepack.json"


def test_the_expected_packs_ship() -> None:
    expected = {
        "tfserving",
        "nginx",
        "docker",
        "python",
        "kernel",
        "mlserver",
        "kserve",
        "triton",
        "torchserve",
        "clients",
    }
    assert {p.stem for p in PACKS} >= expected


def test_all_shipped_packs_lint_clean_together() -> None:
    assert lint(PACKS) == []
    Engine(load_packs(PACKS), ManualClock(0.0))  # every rule has a detector and every pattern compiles


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: p.name)
def test_packs_point_editors_at_the_schema(pack: Path) -> None:
    first = pack.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=schema/rulepack.json"
    assert (pack.parent / "schema" / "rulepack.json").is_file()


def test_schema_file_is_up_to_date() -> None:
    """Regenerate with: python -c 'import json; from watcher.rulepack.schema import schema_json;
    print(json.dumps(schema_json(), indent=2))' > rules/schema/rulepack.json"""
    assert json.loads(SCHEMA_FILE.read_text()) == schema_json(), "rules/schema/rulepack.json is stale"


def test_every_shipped_rule_test_passes() -> None:
    results = run_rule_tests([TESTS])
    assert results, "no rule tests found"
    failed = [f"{r.file} :: {r.name}\n  " + "\n  ".join(r.failures) for r in results if not r.passed]
    assert not failed, "\n".join(failed)


def test_every_shipped_rule_has_a_firing_test_and_a_classified_line() -> None:
    fired: set[str] = set()
    classified: set[str] = set()
    for path in sorted(TESTS.glob("*.yaml")):
        spec = load_rule_test_file(path)
        for test in spec.tests:
            fired.update(e.rule for e in test.expect if not e.resolved)
            for case in test.classify:
                classified.update(case.rules or ())
    untested = []
    for pack in load_packs(PACKS):
        for rule in pack.rules:
            if rule.predicts is not None and rule.id not in fired:
                untested.append(f"{rule.id}: no test expects it to fire")
            if isinstance(rule, MatchRule) and rule.id not in classified:
                untested.append(f"{rule.id}: no classify case shows a real line it matches")
    assert not untested, "\n".join(untested)


PACK = """
pack: t
rules:
  - id: oom-line
    match: {log: 'OOM when allocating'}
    when: {count: 2, within: 1m}
    predicts: oom
  - id: loaded
    match: {log: 'Successfully loaded servable version'}
    lifecycle: model_loaded
  - id: memory-high
    threshold: {series: memory_ratio, above: 0.9}
    for: 30s
    predicts: oom
"""

OOM = (
    "2024-05-01 10:00:00.000000: W external/x.cc:1] OP_REQUIRES failed : Resource exhausted: OOM when allocating tensor"
)


def _write(tmp_path: Path, test_yaml: str) -> Path:
    (tmp_path / "pack.yaml").write_text(PACK)
    path = tmp_path / "pack_test.yaml"
    path.write_text(test_yaml)
    return path


def test_a_wrong_expectation_fails_with_expected_and_got(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"""
rule_files: [pack.yaml]
tests:
  - name: wrong time and a missing expectation
    target: {{container: tfs-1}}
    logs:
      - {{at: 0s, line: '{OOM}'}}
      - {{at: 20s, line: '{OOM}'}}
    expect:
      - {{at: 5s, rule: oom-line, predicts: oom}}
    classify:
      - {{line: 'Successfully loaded servable version {{name: m version: 1}}', lifecycle: [startup]}}
""",
    )
    [result] = run_rule_tests([path])
    assert not result.passed
    text = "\n".join(result.failures)
    assert "expected finding at 5s, rule oom-line, predicts oom (± 1s); got: at 20s, rule oom-line" in text
    assert "unexpected finding at 20s, rule oom-line, predicts oom, target tfs-1" in text
    assert "lifecycle: expected ['startup'], got ['model_loaded']" in text
    out = io.StringIO()
    assert main([path], out=out) == 1
    assert "FAIL  wrong time and a missing expectation" in out.getvalue()
    assert "0 passed, 1 failed" in out.getvalue()


def test_a_correct_test_with_series_passes(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        f"""
rule_files: [pack.yaml]
evaluation_interval: 5s
tests:
  - name: series and lines
    target: {{container: tfs-1}}
    logs:
      - {{at: 0s, line: '{OOM}'}}
      - {{at: 20s, line: '{OOM}'}}
    series:
      - {{name: memory_ratio, at: 0s, step: 15s, values: "0.5 0.95x4 0.5"}}
    expect:
      - {{at: 20s, rule: oom-line, predicts: oom}}
      - {{at: 60s, rule: oom-line, resolved: true}}
      - {{at: 45s, rule: memory-high, predicts: oom}}
      - {{at: 90s, rule: memory-high, resolved: true}}
""",
    )
    [result] = run_rule_tests([path])
    assert result.passed, result.failures
    assert main([path], out=io.StringIO()) == 0


def test_an_invalid_test_file_reports_file_line_col(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
rule_files: [pack.yaml]
tests:
  - name: typo
    expct: []
""",
    )
    [result] = run_rule_tests([path])
    assert not result.passed
    assert result.failures[0].startswith(f"{path}:5:5: tests[0]: unknown key 'expct'")


def test_a_missing_rule_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "x_test.yaml"
    path.write_text("rule_files: [nope.yaml]\ntests: [{name: t}]\n")
    [result] = run_rule_tests([path])
    assert "rule file not found" in result.failures[0]


def test_promtool_series_notation() -> None:
    values = expand_values("1 2+1x2 _ stale 3x1 5-1x2 1e3")
    assert values == [1.0, 2.0, 3.0, 4.0, None, "stale", 3.0, 3.0, 5.0, 4.0, 3.0, 1000.0]
    with pytest.raises(ValueError, match="invalid series"):
        expand_values("1 abc")


def test_the_shipped_patterns_keep_the_one_pass_block_scan() -> None:
    """One end-anchored alternation (``( |$)``) once sent every line of every batch through
    ``re``: 10x slower than grep. The shipped set must stay scannable in one pass."""
    from watcher.rulepack.compile import compile_packs

    ruleset = compile_packs(load_packs([SHIPPED_RULES]))
    if ruleset.patterns.backend != "hyperscan":
        pytest.skip("hyperscan is not installed")
    assert ruleset.patterns.scans_blocks
