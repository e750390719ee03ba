from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field, ValidationError

from watcher.detectors import registry
from watcher.detectors.base import Detector
from watcher.rulepack import (
    ACTION_NAMES,
    RulePack,
    format_duration,
    lint_text,
    parse_duration,
    schema_json,
)
from watcher.rulepack.durations import DurationError
from watcher.rulepack.schema import (
    AlertAction,
    DrainAction,
    HoldAction,
    LogMatch,
    RecreateAction,
    RestartAction,
    VerifyAction,
    WeightAction,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1y", 31536000.0),
        ("1m30s500ms", 90.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "10", "1m1h", "10 m", "-5s", "1.5h", "5min", "ms", "s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(DurationError, match="expected a Prometheus duration"):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.25) == "250ms"


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("(a+)+$", "nests a quantifier"),
        ("(a*)*", "nests a quantifier"),
        ("(?:x+y?)+", "nests a quantifier"),
        (r"(\w+) \1", "backreference"),
        (r"(?P<w>x)(?P=w)", "backreference"),
        ("foo(?=bar)", "lookahead or lookbehind"),
        ("(?<!foo)bar", "lookahead or lookbehind"),
        ("(?>abc)", "atomic group"),
        ("a++", "possessive"),
        ("(a)?(?(1)b|c)", "conditional"),
        ("a{2000}", "exceeds RE2's limit"),
        ("x" * 1025, "limit is 1024"),
        ("foo(", "invalid regex"),
        ("(a|aa)*b", "alternation without bound"),
        ("x?", "matches the empty line"),
        ("(a{1,30}){1,30}b", "nests bounded quantifiers"),
        (r"\d+\d+x", "two unbounded quantifiers in a row"),  # re: 12 s on 3000 digits
        (r"\s*.*x", "two unbounded quantifiers in a row"),
        (r"(\d+)(x)?[0-9]*y", "two unbounded quantifiers in a row"),  # across groups and optional parts
        ("(?i)a+A+b", "two unbounded quantifiers in a row"),  # the same bytes once case is folded
    ],
)
def test_unsafe_regexes_are_rejected(pattern: str, problem: str) -> None:
    found = _regex_problem(pattern)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "pattern",
    [
        "OOM when allocating",
        r"status=(5\d\d)",
        "(foo|bar)+",
        r"\d+ms",
        "a{3,5}b",
        "(a{2}){3}",
        r"(\d{1,3}\.){3}\d",
        r"line [0-9]+: +[0-9]+ Killed",  # the repeats are over different characters
        "a+A+b",  # case-sensitive: different bytes
        r"\d+\d{1,3}x",  # the second one is bounded
        "connect.*failed.*upstream",  # separated by characters: allowed (see watcher/matcher.py)
    ],
)
def test_safe_regexes_pass(pattern: str) -> None:
    assert _regex_problem(pattern) is None


def _regex_problem(pattern: str) -> str | None:
    """What the schema says of a regex (it asks the matcher: one definition of a valid pattern)."""
    try:
        LogMatch.model_validate({"regex": True, "log": pattern})
    except ValidationError as exc:
        return str(exc.errors()[0]["msg"])
    return None


def _pack(rule: dict[str, Any]) -> dict[str, Any]:
    return {"pack": "p", "rules": [{"id": "r", "predicts": "crash", **rule}]}


def test_bare_and_mapping_actions_normalise_to_the_same_model() -> None:
    bare = RulePack.model_validate(
        _pack({"event": {"kind": "die"}, "then": ["drain", "restart", "alert", "verify", "recreate"]})
    )
    nulls = RulePack.model_validate(
        _pack(
            {
                "event": {"kind": "die"},
                "then": [{"drain": None}, {"restart": {}}, {"alert": {}}, {"verify": None}, {"recreate": {}}],
            }
        )
    )
    assert bare.rules[0].then == nulls.rules[0].then
    kinds = [type(a) for a in bare.rules[0].then]
    assert kinds == [DrainAction, RestartAction, AlertAction, VerifyAction, RecreateAction]
    drain = bare.rules[0].then[0]
    assert isinstance(drain, DrainAction) and drain.drain.wait == 5.0


def test_action_names_cover_every_action_type() -> None:
    names = {
        t.name
        for t in (AlertAction, DrainAction, HoldAction, RecreateAction, RestartAction, VerifyAction, WeightAction)
    }
    assert set(ACTION_NAMES) == names


def test_duplicate_ids_checked_when_validating_directly() -> None:
    data = {"pack": "p", "rules": [{"id": "a", "predicts": "oom", "event": {"kind": "oom"}}] * 2}
    with pytest.raises(ValidationError, match=r"duplicate rule id 'a' \(rules\[0\] and rules\[1\]\)"):
        RulePack.model_validate(data)


def test_models_are_frozen() -> None:
    pack = RulePack.model_validate(_pack({"event": {"kind": "oom"}}))
    with pytest.raises(ValidationError):
        pack.rules[0].id = "other"


class _AnomalyParams(BaseModel):
    model_config = {"extra": "forbid"}
    z: float = Field(gt=0)
    window: int = 60


class _TestAnomaly(Detector):
    kind = "test-anomaly"
    params_model = _AnomalyParams


class _OtherAnomaly(Detector):
    kind = "test-anomaly"
    params_model = BaseModel


def test_registered_detector_kind_validates_its_params() -> None:
    registry.register(_TestAnomaly)
    try:
        registry.register(_TestAnomaly)  # same class again: idempotent
        assert registry.detector_kinds()["test-anomaly"] is _AnomalyParams
        ok = (
            "pack: p\nrules:\n  - id: a\n"
            "    detector: {kind: test-anomaly, series: s, params: {z: 3}}\n    predicts: latency\n"
        )
        assert lint_text(ok) == []
        bad = ok.replace("{z: 3}", "{z: -1, zz: 2}")
        assert [str(e) for e in lint_text(bad, "a.yaml")] == [
            "a.yaml:4:59: rules[0].detector.params.z: Input should be greater than 0",
            "a.yaml:4:63: rules[0].detector.params: unknown key 'zz'",
        ]
        with pytest.raises(ValueError, match="already registered"):
            registry.register(_OtherAnomaly)
    finally:
        registry.unregister("test-anomaly")
    assert "unknown detector kind 'test-anomaly'; known kinds: anomaly, change, forecast" in str(lint_text(ok)[0])


def test_schema_is_json_and_well_formed() -> None:
    schema = schema_json()
    text = json.dumps(schema)
    assert json.loads(text) == schema
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["required"]) == {"pack", "rules"}
    defs = schema["$defs"]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(schema):
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in defs, ref
    rule_variants = {r.removeprefix("#/$defs/") for r in refs(schema["properties"]["rules"]["items"]["oneOf"])}
    assert rule_variants == {"MatchRule", "ThresholdRule", "PromQLRule", "EventRule", "DetectorRule", "ForecastRule"}
    for name in rule_variants:
        assert defs[name]["additionalProperties"] is False
        assert "id" in defs[name]["required"]
    assert defs["DrainAction"]["anyOf"][0] == {"const": "drain"}
    assert defs["Predicts"]["enum"] == [
        "oom",
        "crash",
        "load_failure",
        "http_5xx",
        "upstream_failure",
        "latency",
        "unhealthy",
        "version_mismatch",
    ]


def _mini_validate(value: Any, schema: dict[str, Any], defs: dict[str, Any]) -> bool:
    """A tiny JSON Schema checker (enough for this schema) since jsonschema is not a dependency."""
    import re

    if "$ref" in schema:
        return _mini_validate(value, defs[schema["$ref"].removeprefix("#/$defs/")], defs)
    if "anyOf" in schema and not any(_mini_validate(value, s, defs) for s in schema["anyOf"]):
        return False
    if "oneOf" in schema and sum(_mini_validate(value, s, defs) for s in schema["oneOf"]) != 1:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if kind in checks and not isinstance(value, checks[kind]):
        return False
    if kind == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        return False
    if kind == "number" and (not isinstance(value, int | float) or isinstance(value, bool)):
        return False
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        return False
    if isinstance(value, dict) and kind == "object":
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        for k, v in value.items():
            if k in props:
                if not _mini_validate(v, props[k], defs):
                    return False
            else:
                extra = schema.get("additionalProperties")
                if extra is False or (isinstance(extra, dict) and not _mini_validate(v, extra, defs)):
                    return False
    if isinstance(value, list) and "items" in schema:
        return all(_mini_validate(v, schema["items"], defs) for v in value)
    return True


def test_good_pack_validates_against_the_schema_and_bad_ones_do_not() -> None:
    schema = schema_json()
    good = yaml.safe_load((Path(__file__).parent / "golden" / "good" / "tfserving.yaml").read_text())
    assert _mini_validate(good, schema, schema["$defs"])
    for broken in ("two-conditions", "unknown-key-rule", "bad-duration", "bad-predicts"):
        data = yaml.safe_load((Path(__file__).parent / "golden" / "bad" / f"{broken}.yaml").read_text())
        assert not _mini_validate(data, schema, schema["$defs"]), broken


def test_whole_line_takes_a_literal_not_a_regex() -> None:
    with pytest.raises(ValidationError, match="whole_line takes a literal"):
        LogMatch(log="Kill(ed)?", regex=True, whole_line=True)
    assert LogMatch(log="Killed", whole_line=True).whole_line


def test_a_whole_line_rule_matches_the_line_behind_its_wrapper_and_nothing_longer() -> None:
    from watcher.clock import ManualClock
    from watcher.engine import Engine
    from watcher.model import LogRecord, Target

    pack = RulePack.model_validate(
        {
            "pack": "t",
            "rules": [{"id": "bare-killed", "match": {"log": "Killed", "whole_line": True}, "predicts": "oom"}],
        }
    )
    engine = Engine([pack], ManualClock())

    def rules(line: str) -> tuple[str, ...]:
        return engine.classify(LogRecord(Target("c"), 0.0, line)).rules

    assert rules("Killed") == ("bare-killed",)
    assert rules("tfs-1    | Killed") == ("bare-killed",)
    assert rules('{"log":"Killed\\n","stream":"stderr","time":"2024-01-01T00:00:00Z"}') == ("bare-killed",)
    assert rules("Killed process 4242 (tensorflow_mode)") == ()
    assert rules("the job was Killed") == ()


def test_rule_annotations_and_runbook_url_lint_clean_and_a_runbook_must_be_a_url() -> None:
    """Refused by lint before issue #19; now they reach the incident's alert (see test_alert_lifecycle)."""
    rule = """
pack: p
rules:
  - id: r
    match: {log: 'boom'}
    predicts: crash
    labels: {team: ml}
    annotations: {dashboard: 'https://grafana.example/d/x?var-replica=$replica'}
    runbook_url: %s
    then: [alert]
"""
    assert lint_text(rule % "https://runbooks.example/crash", "p.yaml") == []
    errors = [str(e) for e in lint_text(rule % "runbooks/crash.md", "p.yaml")]
    assert len(errors) == 1 and "runbook_url" in errors[0], errors
