"""The one rule-pack compile step: YAML files (or packs) in, one immutable :class:`RuleSet` out.

Lint (``watcher rules lint``), ``watcher run`` (start and every hot reload), ``watcher replay``,
the rule tests and the unit tests all come through here, and it builds everything the engine
would build: the pattern set of every match rule and one detector per rule. So a pack that lints
clean runs, and one that would fail in the engine fails here first, at ``file:line:col``, instead
of as an exception in the engine thread.

A :class:`RuleSet` is what a reload swaps in one step: the packs, the compiled pattern set, the
detector class of each rule (the engine instantiates fresh detectors from it), the Prometheus
queries the sources run and the executor's rule map with the guard-rail defaults each rule's
plans run under.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from watcher.detectors.base import Detector
from watcher.detectors.registry import build_detector
from watcher.matcher import PatternError, PatternSet, PatternSpec, check_pattern
from watcher.rulepack.loader import LintError, RulePackError, parse_paths, parse_text
from watcher.rulepack.schema import AnyRule, Defaults, MatchRule, PromQLRule, RulePack
from watcher.sources.prometheus import PromQuery

ExecutorRules = Mapping[str, tuple[AnyRule, Defaults]]
"""Rule id -> (rule, the guard-rail defaults its plans run under)."""


@dataclass(frozen=True, slots=True)
class CompileOptions:
    """What the deployment, not the pack, decides about a rule set.

    ``prometheus_window`` replaces ``$window`` in ``series:`` queries; ``defaults`` replaces every
    pack's guard-rail defaults (the testbed's scenarios); ``cooldown_override_s`` replaces only
    their cooldown (``WATCHER_COOLDOWN_OVERRIDE_S``, e.g. a staging fleet that may act more often).
    """

    prometheus_target_label: str = "replica"
    prometheus_window: str = "1m"
    defaults: Defaults | None = None
    cooldown_override_s: float | None = None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Everything compiled from a set of packs, immutable, swapped whole on reload."""

    packs: tuple[RulePack, ...]
    rules: Mapping[str, AnyRule]
    pack_of: Mapping[str, str]
    patterns: PatternSet
    detector_classes: Mapping[str, type[Detector]]
    queries: tuple[PromQuery, ...]
    executor_rules: ExecutorRules
    options: CompileOptions = field(default_factory=CompileOptions)

    def new_detectors(self) -> dict[str, Detector]:
        """Fresh detectors, one per rule (the engine's own; a rule set holds no detector state)."""
        return {rule_id: self.detector_classes[rule_id](rule) for rule_id, rule in self.rules.items()}

    @property
    def rule_count(self) -> int:
        return len(self.rules)


def compile_packs(source: Sequence[Path] | Sequence[RulePack], options: CompileOptions | None = None) -> RuleSet:
    """Compile packs (files, directories of ``*.yaml``, or packs already parsed) or raise
    :class:`RulePackError` with every error, each at ``file:line:col``."""
    ruleset, errors = _compile(source, options or CompileOptions())
    if ruleset is None:
        raise RulePackError(errors)
    return ruleset


def lint(paths: Sequence[Path]) -> list[LintError]:
    """Every problem in these packs, considered together (rule ids must be unique across them)."""
    return _compile(paths, CompileOptions())[1]


def lint_text(text: str, file: str = "<string>") -> list[LintError]:
    """Lint one pack given as text (editors, tests, ``rules test`` fixtures)."""
    packs, errors = parse_text(text, file)
    if not errors:
        errors = _compile(packs, CompileOptions())[1]
    return sorted(errors, key=lambda e: (e.line, e.col, e.message))


def load_packs(paths: Sequence[Path]) -> list[RulePack]:
    """The packs of these files, compiled (so they will run), or :class:`RulePackError`."""
    return list(compile_packs(paths).packs)


# --------------------------------------------------------------------------------------- internals


def _compile(
    source: Sequence[Path] | Sequence[RulePack], options: CompileOptions
) -> tuple[RuleSet | None, list[LintError]]:
    if all(isinstance(s, RulePack) for s in source):
        packs = [s for s in source if isinstance(s, RulePack)]
        errors = _duplicate_ids(packs)
    else:
        packs, errors = parse_paths([Path(s) for s in source if not isinstance(s, RulePack)])
    if errors:
        return None, errors
    rules: dict[str, AnyRule] = {}
    pack_of: dict[str, str] = {}
    for pack in packs:
        for rule in pack.rules:
            rules[rule.id] = rule
            pack_of[rule.id] = pack.pack
    classes: dict[str, type[Detector]] = {}
    specs: list[PatternSpec] = []
    for rule in rules.values():
        try:
            classes[rule.id] = type(build_detector(rule))  # built once here so a bad rule fails here
        except Exception as exc:  # a detector refusing its rule is a pack error, whatever it raises
            message = str(exc).removeprefix(f"{rule.origin}: ").removeprefix(f"rule {rule.id!r}: ")
            errors.append(_at(rule, pack_of, message))
        if isinstance(rule, MatchRule):
            spec = PatternSpec(rule.id, rule.match.log, rule.match.regex, rule.match.ignore_case)
            try:
                check_pattern(spec)
            except PatternError as exc:
                errors.append(_at(rule, pack_of, f"match.log: {exc.reason}"))
            specs.append(spec)
    if errors:
        return None, sorted(errors)
    ruleset = RuleSet(
        packs=tuple(packs),
        rules=MappingProxyType(rules),
        pack_of=MappingProxyType(pack_of),
        patterns=PatternSet(specs),
        detector_classes=MappingProxyType(classes),
        queries=tuple(_queries(packs, options)),
        executor_rules=MappingProxyType(_executor_rules(packs, options)),
        options=options,
    )
    return ruleset, []


def _at(rule: AnyRule, pack_of: Mapping[str, str], message: str) -> LintError:
    origin = rule.origin
    if origin is None:
        return LintError(f"<pack {pack_of.get(rule.id, '?')}>", 1, 1, f"rule {rule.id!r}: {message}")
    return LintError(origin.file, origin.line, origin.col, f"rule {rule.id!r}: {message}")


def _duplicate_ids(packs: Sequence[RulePack]) -> list[LintError]:
    """Packs built in code skip the loader's cross-file check; the engine needs unique ids all the same."""
    first_pack: dict[str, str] = {}
    errors: list[LintError] = []
    for pack in packs:
        for rule in pack.rules:
            if rule.id in first_pack:
                message = f"duplicate rule id (also in pack {first_pack[rule.id]!r})"
                errors.append(_at(rule, {rule.id: pack.pack}, message))
            first_pack.setdefault(rule.id, pack.pack)
    return errors


def _queries(packs: Sequence[RulePack], options: CompileOptions) -> list[PromQuery]:
    """The queries the packs need: each ``series:`` definition (its name is the series the detectors
    read; the first pack to define a name wins, the loader reports duplicates) and each PromQL rule,
    at its own ``every`` when it has one."""
    queries: dict[str, PromQuery] = {}
    for pack in packs:
        for series in pack.series:
            label = series.target_label or options.prometheus_target_label
            expr = series.expr(options.prometheus_window)
            queries.setdefault(series.name, PromQuery(series.name, expr, target_label=label))
    for pack in packs:
        for rule in pack.rules:
            if isinstance(rule, PromQLRule):
                query = PromQuery(
                    rule.id, rule.promql, target_label=options.prometheus_target_label, interval_s=rule.every
                )
                queries.setdefault(rule.id, query)
    return list(queries.values())


def _executor_rules(packs: Sequence[RulePack], options: CompileOptions) -> dict[str, tuple[AnyRule, Defaults]]:
    """Rule id -> (rule, its pack's defaults, or the options' override)."""
    out: dict[str, tuple[AnyRule, Defaults]] = {}
    for pack in packs:
        defaults = options.defaults or pack.defaults
        if options.cooldown_override_s is not None:
            defaults = defaults.model_copy(update={"cooldown": options.cooldown_override_s})
        for rule in pack.rules:
            out[rule.id] = (rule, defaults)
    return out


__all__ = ["CompileOptions", "ExecutorRules", "RuleSet", "compile_packs", "lint", "lint_text", "load_packs"]
