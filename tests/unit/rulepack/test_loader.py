from __future__ import annotations

from pathlib import Path

import pytest

from watcher.rulepack import LintError, RulePackError, lint, lint_text, load_packs
from watcher.rulepack.loader import MAX_FILE_BYTES
from watcher.rulepack.schema import ForecastRule, MatchRule, PromQLRule

GOOD = """\
pack: p
rules:
  - id: a
    match: {log: boom}
    predicts: crash
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lint_error_prints_like_a_compiler() -> None:
    assert str(LintError("a.yaml", 3, 5, "oops")) == "a.yaml:3:5: oops"


def test_all_or_nothing_one_bad_file_loads_nothing(tmp_path: Path) -> None:
    good = _write(tmp_path, "good.yaml", GOOD)
    bad = _write(tmp_path, "bad.yaml", GOOD.replace("pack: p", "pack: q").replace("id: a", "id: b") + "extra: 1\n")
    assert load_packs([good])
    with pytest.raises(RulePackError) as caught:
        load_packs([good, bad])
    assert [e.file for e in caught.value.errors] == [str(bad)]
    assert "unknown key 'extra'" in str(caught.value)


def test_errors_of_all_files_are_reported_in_file_order(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.yaml", "pack: a\nrules: []\n")
    b = _write(tmp_path, "b.yaml", "pack: b\nrules: [{id: x, predicts: oom}]\nbogus: 1\n")
    errors = lint([b, a])
    assert [e.file for e in errors] == [str(b), str(b), str(a)]


def test_directory_expands_to_yaml_files(tmp_path: Path) -> None:
    _write(tmp_path, "one.yaml", GOOD)
    _write(tmp_path, "two.yml", GOOD.replace("pack: p", "pack: q").replace("id: a", "id: b"))
    _write(tmp_path, "notes.txt", "not a pack")
    assert sorted(p.pack for p in load_packs([tmp_path])) == ["p", "q"]


def test_origins_point_at_the_rule(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.yaml", GOOD + "  - id: b\n    event: {kind: oom}\n    predicts: oom\n")
    (pack,) = load_packs([path])
    assert pack.source == str(path)
    assert [str(r.origin) for r in pack.rules] == [f"{path}:3:5", f"{path}:6:5"]


def test_file_size_is_capped(tmp_path: Path) -> None:
    path = _write(tmp_path, "big.yaml", GOOD + "#" * MAX_FILE_BYTES)
    (error,) = lint([path])
    assert (error.line, error.col) == (1, 1)
    assert "at most 1048576 bytes (1 MiB)" in error.message


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    (missing,) = lint([tmp_path / "nope.yaml"])
    assert "cannot read file" in missing.message
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"pack: p\n# caf\xe9\n")
    (enc,) = lint([latin])
    assert "not UTF-8" in enc.message


def test_empty_file() -> None:
    assert [str(e) for e in lint_text("", "e.yaml")] == [
        "e.yaml:1:1: empty file: a rule pack needs at least pack and rules"
    ]


def test_billion_laughs_is_refused_before_validation() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = "pack: p\n" + "\n".join(lines) + "\nrules: [*a8]\n"
    errors = lint_text(text, "lol.yaml")
    assert len(errors) == 1 and "expands to more than" in errors[0].message


def test_cyclic_alias_is_refused() -> None:
    errors = lint_text("pack: p\nrules: &r [*r]\n", "c.yaml")
    assert len(errors) == 1 and "cyclic" in errors[0].message


def test_aliases_within_limits_are_fine() -> None:
    text = (
        "pack: p\nrules:\n"
        "  - id: a\n    match: {log: boom}\n    predicts: crash\n    then: &steps [drain, restart]\n"
        "  - id: b\n    event: {kind: oom}\n    predicts: oom\n    then: *steps\n"
    )
    assert lint_text(text) == []


def test_duplicate_pack_names_across_files(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.yaml", GOOD)
    b = _write(tmp_path, "b.yaml", GOOD.replace("id: a", "id: b"))
    assert [str(e) for e in lint([a, b])] == [f"{b}:1:7: duplicate pack name 'p': also at {a}:1:7"]


def test_duplicate_series_names_across_files(tmp_path: Path) -> None:
    series = "series:\n  - {name: error_ratio, promql: 'vector(0)'}\n"
    a = _write(tmp_path, "a.yaml", GOOD.replace("rules:", series + "rules:"))
    b = _write(
        tmp_path,
        "b.yaml",
        GOOD.replace("pack: p", "pack: q").replace("id: a", "id: b").replace("rules:", series + "rules:"),
    )
    [error] = lint([a, b])
    assert str(error).startswith(f"{b}:") and f"series 'error_ratio' defined twice: also at {a}:" in str(error)


def test_durations_in_files_must_have_units_but_code_may_use_seconds() -> None:
    errors = lint_text(GOOD.replace("predicts: crash", "predicts: crash\n    for: 30"))
    assert len(errors) == 1 and "invalid duration 30" in errors[0].message
    rule = MatchRule.model_validate({"id": "x", "match": {"log": "y"}, "predicts": "oom", "for": 30})
    assert rule.pending_for == 30.0


def test_loaded_rules_are_typed(tmp_path: Path) -> None:
    path = Path(__file__).parent / "golden" / "good" / "tfserving.yaml"
    (pack,) = load_packs([path])
    runway = pack.rule("memory-runway")
    assert isinstance(runway, ForecastRule)
    spec = runway.detector_spec()
    assert spec.kind == "forecast" and spec.series == "memory_working_set_bytes"
    assert spec.parsed_params().model_dump(include={"limit", "fraction", "within"}) == {
        "limit": "memory_limit_bytes",
        "fraction": 0.95,
        "within": 120.0,
    }
    ratio = pack.rule("error-ratio")
    assert isinstance(ratio, PromQLRule)
    assert ratio.pending_for == 30.0 and ratio.keep_firing_for == 120.0 and ratio.every == 15.0
    assert ratio.threshold.crossed(0.06) and not ratio.threshold.crossed(0.05)
    assert pack.rule("model-loaded").severity.value == "info"
    assert pack.rule("memory-runway").severity.value == "warning"  # from defaults
    assert pack.defaults.cooldown == 600.0 and pack.defaults.max_restarts.per == 3600.0


def test_non_string_keys_are_explained_once() -> None:
    text = "yes: 1\npack: p\nrules: [{id: a, event: {kind: oom}, predicts: oom, labels: {1: x}}]\n"
    assert [str(e) for e in lint_text(text, "k.yaml")] == [
        "k.yaml:1:1: key 'yes' is not a string (YAML reads it as bool); quote it",
        "k.yaml:3:61: key '1' is not a string (YAML reads it as int); quote it",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "pack: p\nrules:\n  - 5\n",
        "rules: {a: 1}",
        "? [a]\n: b",
        "a: 1\n---\nb: 2",
        "pack: p\n\trules: 1",
        "\x07pack: p",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]",
        "pack: p\nrules: [{id: a, match: {log: x}, predicts: oom, then: [{weight: 1.5}, {drain: 5}, 7, {}]}]",
        "pack: p\n<<: {rules: []}\n",
        "!!binary aGVsbG8=",
        "pack: p\nrules: [{id: a, match: {log: x}, predicts: oom, then: &t [*t]}]",
    ],
)
def test_malformed_input_yields_errors_never_exceptions(text: str) -> None:
    errors = lint_text(text, "m.yaml")
    assert errors
    assert all(e.line >= 1 and e.col >= 1 for e in errors)
