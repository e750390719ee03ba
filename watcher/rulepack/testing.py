"""Unit tests for rule packs, promtool-style: inputs over time in, expected findings out.

Why a test format of its own: a rule is only as good as the lines it was written against, and a
pattern that silently stops matching (a new TF Serving wording, a parser change, a typo in a
regex) is a missed OOM in production. So every shipped rule has a test file beside its pack,
holding real log lines, and ``watcher rules test`` runs them through the very engine the live
watcher uses, on a :class:`~watcher.clock.ManualClock`.

A test file::

    rule_files: [../tfserving.yaml]         # paths relative to this file (files or directories)
    evaluation_interval: 1s                 # tick() step; also the time tolerance of expectations
    tests:
      - name: two OOM lines within a minute fire
        target: {container: tfs-1, service: half_plus_two}   # default target of the inputs
        upstreams: {"127.0.0.1:8501": tfs-1}                 # LB address -> container (optional)
        load_balancers: [nginx]              # containers whose lines are the LB's own: only they name a replica
        logs:
          - {at: 0s, line: "2024-... W ...] ... OOM when allocating tensor ..."}
          - {at: 20s, line: "...", target: tfs-2}            # per-input target: a container name
        events:
          - {at: 30s, kind: die, exit_code: 137}
          - {at: 31s, line: "2024-05-01T10:00:00Z container oom 3f2a... (name=tfs-1)"}  # docker events CLI
        series:
          - {name: memory_ratio, at: 0s, step: 15s, values: "0.5 0.6+0.1x3 _ stale 0.95x10"}
        until: 10m                          # run this long (default: last input/expectation + 1 step)
        expect:
          - {at: 20s, rule: tfs-oom-allocating-tensor, predicts: oom, target: tfs-1}
          - {at: 320s, rule: tfs-oom-allocating-tensor, resolved: true}
        expect_no_other_findings: true      # default: any unexpected finding fails the test
        classify:                           # per-line expectations (what `rules explain` shows)
          - {line: "...Successfully loaded servable version {name: m version: 1}",
             lifecycle: [model_loaded], predicts: [], rules: [tfs-model-loaded], source: tfserving}

Series values use promtool's expanding notation: ``a`` one value, ``a+bxn`` / ``a-bxn`` n+1
values stepping by b, ``axn`` n+1 copies of a, ``_`` no sample, ``stale`` a stale sample.

Files are validated like rule packs (unknown keys are errors, each with ``file:line:col``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.model import (
    Finding,
    Lifecycle,
    LifecycleKind,
    LifecycleTag,
    LogRecord,
    Predicts,
    Sample,
    Signal,
    Target,
)
from watcher.parsers import docker_events
from watcher.rulepack.compile import RuleSet, compile_packs
from watcher.rulepack.durations import format_duration
from watcher.rulepack.loader import (
    MAX_FILE_BYTES,
    LintError,
    RulePackError,
    _check_nodes,
    _expand,
    _one_error,
    _yaml_error,
)
from watcher.rulepack.schema import STRICT_DURATIONS, Duration
from watcher.rules import SHIPPED_RULE_TESTS

T0 = 1_714_557_600.0  # 2024-05-01T10:00:00Z: test time 0s (an epoch far from 0 catches "ts or 0" bugs)
DEFAULT_TESTS_DIR = SHIPPED_RULE_TESTS
MAX_STEPS = 1_000_000  # evaluation steps per test: a typo like `until: 1y` at 1s must not hang CI


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetSpec(_Model):
    """A replica as the test names it; only ``container`` is required."""

    container: str = Field(min_length=1)
    engine: str = "local"
    service: str | None = None

    def target(self) -> Target:
        return Target(self.container, self.engine, self.service)


class LogInput(_Model):
    """One raw log line, fed as the container's ``docker logs`` would deliver it."""

    at: Duration
    line: str
    target: str | None = Field(default=None, description="container name; default: the test's target")


class EventInput(_Model):
    """A Docker lifecycle event: by fields, or as a ``docker events`` CLI line."""

    at: Duration
    kind: LifecycleKind | None = None
    exit_code: int | None = None
    health: str | None = None
    line: str | None = Field(default=None, description="a `docker events` line; kind etc. come from it")
    target: str | None = None

    @model_validator(mode="after")
    def _kind_or_line(self) -> EventInput:
        if (self.kind is None) == (self.line is None):
            raise ValueError("an event needs exactly one of kind or line")
        if self.line is not None and (self.exit_code is not None or self.health is not None):
            raise ValueError("exit_code and health come from the line; do not give them with line")
        return self


class SeriesInput(_Model):
    """Samples of one series for one target, promtool-style values every ``step``."""

    name: str = Field(min_length=1)
    values: str
    at: Duration = 0.0
    step: Duration = 15.0
    target: str | None = None

    @model_validator(mode="after")
    def _valid_values(self) -> SeriesInput:
        expand_values(self.values)  # raises ValueError with the bad token
        if self.step <= 0:
            raise ValueError("step must be positive")
        return self


class ExpectedFinding(_Model):
    """A finding the rules must produce at ``at`` (± the evaluation interval)."""

    at: Duration
    rule: str
    predicts: Predicts | None = None
    target: str | None = Field(default=None, description="container name (or engine/container key)")
    resolved: bool = False


class ClassifyCase(_Model):
    """What the rules must make of one line; omitted keys are not checked."""

    line: str
    rules: list[str] | None = None
    predicts: list[Predicts] | None = None
    lifecycle: list[LifecycleTag] | None = None
    source: str | None = Field(default=None, description="the parser that must understand the line")
    level: str | None = None
    target: str | None = None


class RuleTest(_Model):
    name: str = Field(min_length=1)
    target: TargetSpec = Field(default_factory=lambda: TargetSpec(container="replica-1"))
    upstreams: dict[str, str] = Field(default_factory=dict, description="LB upstream address -> container")
    load_balancers: list[str] = Field(
        default_factory=list,
        description="containers whose lines are the LB's own (only they name a replica)",
    )
    logs: list[LogInput] = Field(default_factory=list)
    events: list[EventInput] = Field(default_factory=list)
    series: list[SeriesInput] = Field(default_factory=list)
    until: Duration | None = None
    expect: list[ExpectedFinding] = Field(default_factory=list)
    expect_no_other_findings: bool = True
    classify: list[ClassifyCase] = Field(default_factory=list)


class RuleTestFile(_Model):
    rule_files: Annotated[list[str], Field(min_length=1)]
    evaluation_interval: Duration = 1.0
    tests: Annotated[list[RuleTest], Field(min_length=1)]

    @model_validator(mode="after")
    def _positive_interval(self) -> RuleTestFile:
        if self.evaluation_interval <= 0:
            raise ValueError("evaluation_interval must be positive")
        return self


@dataclass(frozen=True)
class TestResult:
    """The outcome of one test (or of a whole file that could not be run: ``name`` is ``""``)."""

    __test__ = False  # not a pytest class

    file: str
    name: str
    failures: tuple[str, ...] = ()
    findings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def passed(self) -> bool:
        return not self.failures


# ------------------------------------------------------------------------------------- loading


def load_rule_test_file(path: Path) -> RuleTestFile:
    """Parse and validate one test file; raise :class:`RulePackError` with ``file:line:col`` errors."""
    file = str(path)
    try:
        raw = path.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise RulePackError([LintError(file, 1, 1, f"cannot read file: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise RulePackError([LintError(file, 1, 1, f"file is larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RulePackError([LintError(file, 1, 1, f"file is not UTF-8 (byte {exc.start})")]) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise RulePackError([LintError(file, 1, 1, "empty file: a rule test file needs rule_files and tests")])
        errors = _check_nodes(file, root)
        if errors:
            raise RulePackError(errors)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise RulePackError([_yaml_error(file, exc)]) from None
    except yaml.YAMLError as exc:
        raise RulePackError([LintError(file, 1, 1, f"YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise RulePackError([LintError(file, 1, 1, "a rule test file is a mapping with rule_files and tests")])
    try:
        return RuleTestFile.model_validate(data, context={STRICT_DURATIONS: True})
    except ValidationError as exc:
        found = [
            _one_error(file, root, list(err["loc"]), err["type"], err["msg"], hint=False)
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise RulePackError(sorted(found)) from None


def expand_values(text: str) -> list[float | str | None]:
    """promtool's series notation → one entry per step: a float, None (no sample) or "stale"."""
    out: list[float | str | None] = []
    for item in text.split():
        if item in ("_", "stale"):
            out.append(None if item == "_" else "stale")
            continue
        base, x, times = item.partition("x")
        if not x:
            out.append(_number(item))
            continue
        if not times.isdigit():
            raise ValueError(f"invalid series token {item!r}: expected a, a+bxn, a-bxn or axn")
        count = int(times)
        if count > 100_000:
            raise ValueError(f"series token {item!r} expands to more than 100000 values")
        start, delta = base, "0"
        for sign in ("+", "-"):
            cut = base.find(sign, 1)  # not a leading sign of the start value
            if cut > 0 and base[cut - 1] not in "eE":
                start, delta = base[:cut], base[cut:]
                break
        a, b = _number(start), _number(delta)
        out.extend(a + b * i for i in range(count + 1))
    return out


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"invalid series value {text!r}") from None


# ------------------------------------------------------------------------------------- running


def run_rule_tests(paths: Sequence[Path]) -> list[TestResult]:
    """Run every test in these files (or directories of ``*.yaml``); one result per test."""
    results: list[TestResult] = []
    for path in _expand(paths):
        results.extend(run_file(path))
    return results


def run_file(path: Path) -> list[TestResult]:
    """Run one test file; a file that cannot be loaded gives one failed result naming why."""
    file = str(path)
    try:
        spec = load_rule_test_file(path)
    except RulePackError as exc:
        return [TestResult(file, "", tuple(str(e) for e in exc.errors))]
    rule_paths = [(path.parent / p) for p in spec.rule_files]
    missing = [str(p) for p in rule_paths if not p.exists()]
    if missing:
        return [TestResult(file, "", tuple(f"{file}: rule file not found: {m}" for m in missing))]
    try:
        ruleset = compile_packs(rule_paths)
    except RulePackError as exc:
        return [TestResult(file, "", tuple(str(e) for e in exc.errors))]
    return [_run_test(file, ruleset, spec.evaluation_interval, test) for test in spec.tests]


@dataclass(frozen=True)
class _Got:
    at: float
    finding: Finding

    def describe(self) -> str:
        return _describe(
            self.at, self.finding.rule_id, self.finding.predicts, self.finding.target, self.finding.resolved
        )


def _describe(at: float, rule: str, predicts: Predicts | None, target: Target | str | None, resolved: bool) -> str:
    parts = [f"at {format_duration(at)}", f"rule {rule}"]
    if predicts is not None:
        parts.append(f"predicts {predicts.value}")
    if target is not None:
        parts.append(f"target {target.container if isinstance(target, Target) else target}")
    if resolved:
        parts.append("resolved")
    return ", ".join(parts)


def _run_test(file: str, ruleset: RuleSet, step: float, test: RuleTest) -> TestResult:
    default = test.target.target()
    known: dict[str, Target] = {default.container: default}

    def target_of(name: str | None) -> Target:
        if name is None:
            return default
        return known.setdefault(name, Target(name, default.engine, default.service))

    upstreams = {addr: target_of(name) for addr, name in test.upstreams.items()}
    failures: list[str] = []

    timeline: list[tuple[float, int, Signal]] = []
    for log in test.logs:
        timeline.append((log.at, len(timeline), LogRecord(target_of(log.target), T0 + log.at, log.line)))
    for n, event in enumerate(test.events):
        lifecycle = _lifecycle(event, target_of(event.target))
        if isinstance(lifecycle, str):
            failures.append(f"events[{n}]: {lifecycle}")
        else:
            timeline.append((event.at, len(timeline), lifecycle))
    for series in test.series:
        target = target_of(series.target)
        for i, value in enumerate(expand_values(series.values)):
            if value is None:
                continue
            at = series.at + i * series.step
            stale = value == "stale"
            number = 0.0 if isinstance(value, str) else value
            sample = Sample(series.name, T0 + at, number, target=target, stale=stale)
            timeline.append((at, len(timeline), sample))
    timeline.sort(key=lambda item: (item[0], item[1]))

    last_input = max((t for t, _, _ in timeline), default=0.0)
    last_expect = max((e.at for e in test.expect), default=0.0)
    until = test.until if test.until is not None else max(last_input, last_expect) + step
    if until / step > MAX_STEPS:
        return TestResult(file, test.name, (f"until {format_duration(until)} needs more than {MAX_STEPS} steps",))

    clock = ManualClock(T0)
    engine = Engine(ruleset, clock, upstreams=upstreams, load_balancers=[target_of(n) for n in test.load_balancers])
    got: list[_Got] = []

    def record(findings: list[Finding]) -> None:
        got.extend(_Got(f.ts - T0, f) for f in findings)

    index = 0
    tick = 0
    while True:
        tick_at = tick * step
        next_input = timeline[index][0] if index < len(timeline) else None
        if next_input is not None and next_input < tick_at and next_input <= until:
            clock.set(T0 + next_input)
            while index < len(timeline) and timeline[index][0] == next_input:
                record(engine.feed(timeline[index][2]))
                index += 1
            continue
        if tick_at > until + 1e-9:
            break
        clock.set(T0 + tick_at)
        while index < len(timeline) and timeline[index][0] == tick_at:
            record(engine.feed(timeline[index][2]))
            index += 1
        record(engine.tick())
        tick += 1

    failures.extend(_compare(test, got, step))
    for n, case in enumerate(test.classify):
        failures.extend(_check_classify(ruleset, n, case, target_of(case.target)))
    return TestResult(file, test.name, tuple(failures), tuple(g.describe() for g in got))


def _lifecycle(event: EventInput, target: Target) -> Lifecycle | str:
    if event.line is None:
        assert event.kind is not None
        return Lifecycle(target, T0 + event.at, event.kind, event.exit_code, event.health)
    parsed = docker_events.parse(event.line)
    if parsed is None:
        return f"not a `docker events` line: {event.line[:120]!r}"
    kind = docker_events.lifecycle_kind(parsed)
    if kind is None:
        return f"not a container lifecycle event the engine consumes: {event.line[:120]!r}"
    code = parsed.fields.get("exit_code")
    return Lifecycle(
        target,
        T0 + event.at,
        kind,
        int(code) if code is not None and code.lstrip("-").isdigit() else None,
        parsed.fields.get("health"),
        dict(parsed.fields),
    )


def _matches(expected: ExpectedFinding, got: _Got, step: float) -> bool:
    f = got.finding
    if f.rule_id != expected.rule or f.resolved != expected.resolved:
        return False
    if expected.predicts is not None and f.predicts is not expected.predicts:
        return False
    if expected.target is not None and expected.target not in (f.target.container, f.target.key):
        return False
    return abs(got.at - expected.at) <= step + 1e-9


def _compare(test: RuleTest, got: list[_Got], step: float) -> list[str]:
    """Pair expectations with findings (closest in time first) and explain every mismatch."""
    failures: list[str] = []
    unmatched = list(got)
    for expected in sorted(test.expect, key=lambda e: e.at):
        candidates = [g for g in unmatched if _matches(expected, g, step)]
        if candidates:
            unmatched.remove(min(candidates, key=lambda g: abs(g.at - expected.at)))
            continue
        want = _describe(expected.at, expected.rule, expected.predicts, expected.target, expected.resolved)
        same_rule = [g.describe() for g in got if g.finding.rule_id == expected.rule]
        hint = "; ".join(same_rule) if same_rule else "no finding of this rule at all"
        failures.append(f"expected finding {want} (± {format_duration(step)}); got: {hint}")
    if test.expect_no_other_findings:
        failures.extend(f"unexpected finding {g.describe()}" for g in unmatched)
    return failures


def _check_classify(ruleset: RuleSet, n: int, case: ClassifyCase, target: Target) -> list[str]:
    # A fresh engine per line: per-container format detection must not carry over between cases.
    engine = Engine(ruleset, ManualClock(T0))
    c = engine.classify(LogRecord(target, T0, case.line))
    problems: list[str] = []
    checks: list[tuple[str, Sequence[Any] | None, Sequence[Any]]] = [
        ("rules", case.rules, c.rules),
        (
            "predicts",
            [p.value for p in case.predicts] if case.predicts is not None else None,
            [p.value for p in c.predicts],
        ),
        (
            "lifecycle",
            [t.value for t in case.lifecycle] if case.lifecycle is not None else None,
            [t.value for t in c.lifecycle],
        ),
    ]
    for what, want, have in checks:
        if want is not None and sorted(want) != sorted(have):
            problems.append(f"{what}: expected {sorted(want)}, got {sorted(have)}")
    if case.source is not None or case.level is not None:
        # The engine parses only lines some pattern matched; parse here so every line can be checked.
        parsed = engine.parse(LogRecord(target, T0, case.line))
        if case.source is not None and parsed.source != case.source:
            problems.append(f"source: expected {case.source!r}, got {parsed.source!r}")
        if case.level is not None and parsed.level != case.level:
            problems.append(f"level: expected {case.level!r}, got {parsed.level!r}")
    if not problems:
        return []
    shown = case.line if len(case.line) <= 160 else case.line[:157] + "..."
    return [f"classify[{n}] {shown!r}: " + "; ".join(problems)]


# ---------------------------------------------------------------------------------------- CLI


def report(results: Sequence[TestResult], out: TextIO, *, verbose: bool = False) -> int:
    """Print results the way promtool does (failures in full) and return the exit code."""
    current = None
    passed = failed = 0
    for r in results:
        if r.file != current:
            current = r.file
            print(r.file, file=out)
        if r.passed:
            passed += 1
            if verbose:
                print(f"  PASS  {r.name}", file=out)
            continue
        failed += 1
        print(f"  FAIL  {r.name or '(file)'}", file=out)
        for failure in r.failures:
            print(f"        {failure}", file=out)
        if r.findings and verbose:
            print("        all findings:", file=out)
            for f in r.findings:
                print(f"          {f}", file=out)
    summary = f"{passed} passed, {failed} failed" if results else "no rule tests found"
    print(summary, file=out)
    return 0 if results and failed == 0 else 1


def main(paths: Sequence[Path] | None = None, *, out: TextIO | None = None, verbose: bool = False) -> int:
    """``watcher rules test [PATH...]``: default the shipped packs' tests (package data)."""
    if not paths:
        paths = [DEFAULT_TESTS_DIR]
    missing = [p for p in paths if not p.exists()]
    stream = out if out is not None else sys.stdout
    if missing:
        for p in missing:
            print(f"{p}: no such file or directory", file=stream)
        return 1
    return report(run_rule_tests(paths), stream, verbose=verbose)
