"""The one compile step: what lints clean builds an engine, and what the engine refuses is a lint
error at file:line:col, never an exception from ``Engine()`` (or a dead engine thread on reload)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.matcher import PatternError, PatternSet, PatternSpec
from watcher.model import LogRecord, Target
from watcher.rulepack import CompileOptions, RulePackError, compile_packs, lint, lint_text, load_packs

GOLDEN = Path(__file__).parent / "golden"
GOOD = sorted((GOLDEN / "good").glob("*.yaml"))
BAD = sorted((GOLDEN / "bad").glob("*.yaml"))


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_every_good_golden_pack_compiles_and_builds_an_engine(path: Path) -> None:
    ruleset = compile_packs([path])
    engine = Engine(ruleset, ManualClock(0.0))
    assert set(engine.rules) == {r.id for p in ruleset.packs for r in p.rules}
    assert set(engine.detectors) == set(engine.rules)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_every_bad_golden_pack_fails_lint_and_compile_alike(path: Path) -> None:
    files = sorted(path.parent.glob(path.name.split(".")[0] + ".*yaml"))
    errors = lint(files)
    assert errors
    with pytest.raises(RulePackError) as caught:
        compile_packs(files)
    assert list(caught.value.errors) == errors


def _match_rules(path: Path) -> list[tuple[str, PatternSpec, int]]:
    doc = yaml.safe_load(path.read_text())
    lines = path.read_text().splitlines()
    out = []
    for rule in doc["rules"]:
        m = rule["match"]
        spec = PatternSpec(rule["id"], m["log"], m.get("regex", False), m.get("ignore_case", False))
        line = next(n for n, text in enumerate(lines, 1) if f"id: {rule['id']}" in text) + 1  # the match: line
        out.append((rule["id"], spec, line))
    return out


@pytest.mark.parametrize("name", ["engine-refused.yaml", "bad-regex.yaml"])
def test_lint_refuses_exactly_the_patterns_the_engine_refuses(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GOLDEN / "bad")
    path = Path(name)
    reported = {(e.line, e.col) for e in lint([path])}
    for rule_id, spec, line in _match_rules(path):
        try:
            PatternSet([spec])
            engine_refuses = False
        except PatternError:
            engine_refuses = True
        assert ((line, 18) in reported) == engine_refuses, rule_id


def test_a_pack_with_3000_unknown_keys_reports_all_3000() -> None:
    keys = "\n".join(f"    unknown_{i}: 1" for i in range(3000))
    text = f"pack: p\nrules:\n  - id: a\n    match: {{log: boom}}\n    predicts: crash\n{keys}\n"
    errors = lint_text(text, "big.yaml")
    assert len(errors) == 3000
    assert (
        str(errors[0])
        == "big.yaml:6:5: rules[0]: unknown key 'unknown_0'; allowed: " + str(errors[0]).split("allowed: ")[1]
    )
    assert [e.line for e in errors] == list(range(6, 3006))


PACK = """pack: p
defaults: {cooldown: 10m}
series:
  - {name: error_ratio, promql: 'sum by (replica) (rate(errors[$window]))'}
rules:
  - id: boom
    match: {log: boom}
    predicts: crash
    then: [drain, restart]
  - id: ratio
    promql: 'error_ratio > 0'
    threshold: {above: 0.05}
    every: 30s
    predicts: latency
"""


def test_ruleset_holds_queries_with_their_interval_and_the_executor_rules(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PACK)
    options = CompileOptions(prometheus_target_label="name", prometheus_window="2m", cooldown_override_s=30.0)
    ruleset = compile_packs([tmp_path / "p.yaml"], options)
    queries = {q.id: q for q in ruleset.queries}
    assert queries["error_ratio"].expr == "sum by (replica) (rate(errors[2m]))"
    assert queries["error_ratio"].interval_s is None and queries["error_ratio"].target_label == "name"
    assert queries["ratio"].interval_s == 30.0
    rule, defaults = ruleset.executor_rules["boom"]
    assert rule is ruleset.rules["boom"] and defaults.cooldown == 30.0
    plain = compile_packs([tmp_path / "p.yaml"])
    assert plain.executor_rules["boom"][1].cooldown == 600.0


def test_engine_from_packs_goes_through_the_same_compile(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PACK)
    packs = load_packs([tmp_path / "p.yaml"])
    from_packs = Engine(packs, ManualClock(0.0))
    from_ruleset = Engine(compile_packs(packs), ManualClock(0.0))
    line = LogRecord(Target("tfs-0"), 0.0, "boom")
    assert from_packs.classify(line).rules == from_ruleset.classify(line).rules == ("boom",)
    bad = packs[0].model_copy(update={"rules": [*packs[0].rules, packs[0].rules[0]]})
    with pytest.raises(RulePackError, match="duplicate rule id"):
        Engine([bad], ManualClock(0.0))
