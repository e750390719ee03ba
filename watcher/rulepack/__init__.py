"""Rule packs: the YAML language (schema), its loader with ``file:line:col`` errors, the one compile
step to an immutable :class:`RuleSet`, and the Prometheus-style pending/firing/resolved state each
rule keeps per target."""

from watcher.rulepack.compile import CompileOptions, RuleSet, compile_packs, lint, lint_text, load_packs
from watcher.rulepack.durations import DurationError, format_duration, parse_duration
from watcher.rulepack.loader import LintError, RulePackError
from watcher.rulepack.schema import (
    ACTION_NAMES,
    RULE_KINDS,
    Action,
    AnyRule,
    Defaults,
    DetectorRule,
    DetectorSpec,
    EventRule,
    ForecastRule,
    MatchRule,
    Origin,
    PromQLRule,
    Rule,
    RuleBase,
    RulePack,
    ThresholdRule,
    schema_json,
)
from watcher.rulepack.state import RuleState, RuleStateTable, Transition

__all__ = [
    "ACTION_NAMES",
    "RULE_KINDS",
    "Action",
    "AnyRule",
    "CompileOptions",
    "Defaults",
    "DetectorRule",
    "DetectorSpec",
    "DurationError",
    "EventRule",
    "ForecastRule",
    "LintError",
    "MatchRule",
    "Origin",
    "PromQLRule",
    "Rule",
    "RuleBase",
    "RulePack",
    "RulePackError",
    "RuleSet",
    "RuleState",
    "RuleStateTable",
    "ThresholdRule",
    "Transition",
    "compile_packs",
    "format_duration",
    "lint",
    "lint_text",
    "load_packs",
    "parse_duration",
    "schema_json",
]
