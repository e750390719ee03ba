"""The rule-pack language as pydantic models: what a pack may say, checked before anything runs.

Every kind of condition and every action is a member of a discriminated union selected by which
key is present, with ``extra="forbid"`` everywhere. That gives three things at once: typos are
load-time errors (never silently ignored keys), errors name the kind of rule they are about, and
the JSON Schema editors use (``schema_json()``) is a proper ``oneOf`` that cannot drift from the
code. Parameters of actions and statistical detectors are validated here too, at load time, so a
bad pack is refused when it is loaded and not at 3 a.m. when its first action runs.

Where ``for`` lives: ``for`` is a rule-level key for every kind of condition. Threshold rules
(``threshold:`` and ``promql:``) may instead put it inside ``threshold:`` as Prometheus users
expect (``threshold: {above: 0.05, for: 30s}``); giving both is an error. Read the effective value
from :attr:`RuleBase.pending_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from watcher.detectors import registry
from watcher.matcher import PatternError, PatternSpec, check_pattern
from watcher.model import LifecycleKind, LifecycleTag, Predicts, Severity
from watcher.rulepack.durations import (
    DURATION_PATTERN,
    EXPECTED_FORMAT,
    DurationError,
    format_duration,
    parse_duration,
)

NAME_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
RULE_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"


class StrictModel(BaseModel):
    """Frozen, and unknown keys are errors: the two properties every rule-pack node shares."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


# --------------------------------------------------------------------------------------- durations


STRICT_DURATIONS = "strict_durations"
"""Validation-context key: when true (the loader sets it) bare numbers other than 0 are refused,
as Prometheus does, so ``within: 90`` in a file is an error rather than a guess about its unit.
Code building models directly may pass seconds as numbers."""


def _to_seconds(value: object, info: ValidationInfo) -> float:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except DurationError as exc:
            raise PydanticCustomError("duration", str(exc)) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        strict = isinstance(info.context, dict) and bool(info.context.get(STRICT_DURATIONS))
        if value == 0 or (not strict and value > 0):
            return float(value)
    raise PydanticCustomError("duration", f"invalid duration {value!r}: {EXPECTED_FORMAT}")


Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"const": 0}],
            "description": "Prometheus duration: 500ms, 90s, 10m, 1h30m, 2d",
        }
    ),
]
"""Seconds as a float, written in YAML the way Prometheus writes durations."""


# -------------------------------------------------------------------------------------- conditions

LogSource = Literal["tfserving", "nginx", "python", "docker", "kernel", "grpc", "json", "any"]
LogLevel = Literal["debug", "info", "warning", "error", "fatal"]


class LogMatch(StrictModel):
    """A log line condition. A literal substring is the preferred form: cheap and never slow."""

    regex: bool = False
    ignore_case: bool = False
    log: str = Field(min_length=1, description="literal substring, or a RE2-compatible regex if regex: true")
    source: LogSource = "any"
    level: list[LogLevel] | None = None
    whole_line: bool = Field(
        default=False,
        description="the line, without its wrapper and surrounding blanks, is exactly the literal `log`",
    )

    @model_validator(mode="after")
    def _whole_line_is_literal(self) -> LogMatch:
        """Why: a shell's one-word report (``Killed``) means something only as the whole line; an
        anchored regex would cost the scan for every line, a literal plus an equality check does not."""
        if self.whole_line and self.regex:
            raise PydanticCustomError("whole_line", "whole_line takes a literal log, not a regex")
        return self

    @field_validator("log")
    @classmethod
    def _check_log(cls, value: str, info: ValidationInfo) -> str:
        """The matcher's own vetting: one definition of a valid pattern, for lint and engine alike."""
        spec = PatternSpec("", value, bool(info.data.get("regex")), bool(info.data.get("ignore_case")))
        try:
            check_pattern(spec)
        except PatternError as exc:
            raise PydanticCustomError("regex", exc.reason) from None
        return value


class When(StrictModel):
    """Require ``count`` matching lines within a sliding window before the condition is true."""

    count: int = Field(ge=1)
    within: Duration


class _Bound(StrictModel):
    above: float | None = None
    below: float | None = None
    for_: Duration | None = Field(default=None, alias="for")

    @model_validator(mode="after")
    def _exactly_one_bound(self) -> _Bound:
        if (self.above is None) == (self.below is None):
            raise PydanticCustomError("threshold_bound", "threshold needs exactly one of above or below")
        return self

    def crossed(self, value: float) -> bool:
        """Whether ``value`` is on the wrong side of the bound (strictly, like PromQL ``>``/``<``)."""
        if self.above is not None:
            return value > self.above
        assert self.below is not None
        return value < self.below


class PromThreshold(_Bound):
    """The bound a PromQL query result is compared with; the series come from the query."""


class SeriesThreshold(_Bound):
    """A bound on one named series (from Docker stats or a scraped metric)."""

    series: str = Field(min_length=1)


class EventMatch(StrictModel):
    """A container lifecycle event, optionally ``count`` of them ``within`` a window."""

    kind: LifecycleKind
    exit_codes: list[int] | None = None
    health: Literal["healthy", "unhealthy"] | None = None
    count: int = Field(default=1, ge=1)
    within: Duration | None = None

    @model_validator(mode="after")
    def _coherent(self) -> EventMatch:
        if self.health is not None and self.kind is not LifecycleKind.HEALTH_STATUS:
            raise PydanticCustomError("event", "health only applies to kind: health_status")
        if self.exit_codes is not None and self.kind is not LifecycleKind.DIE:
            raise PydanticCustomError("event", "exit_codes only apply to kind: die")
        if self.count > 1 and not self.within:
            raise PydanticCustomError("event", "count > 1 needs a window: add within: <duration>")
        return self


# ------------------------------------------------------------------------ statistical detectors


def _format_sub_errors(errors: list[Any]) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    return "; ".join(parts)


class DetectorSpec(StrictModel):
    """A hook into a statistical detector (forecast, anomaly, change) registered by kind."""

    kind: str
    series: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if registry.params_model(value) is None:
            known = ", ".join(sorted(registry.detector_kinds())) or "(none registered)"
            raise PydanticCustomError("detector_kind", f"unknown detector kind {value!r}; known kinds: {known}")
        return value

    @field_validator("params")
    @classmethod
    def _valid_params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        kind = info.data.get("kind")
        model = registry.params_model(kind) if isinstance(kind, str) else None
        if model is not None:
            try:
                model.model_validate(value)
            except ValidationError as exc:
                errors = exc.errors(include_url=False, include_context=False, include_input=False)
                raise PydanticCustomError(
                    "detector_params",
                    f"invalid params for detector {kind!r}: {_format_sub_errors(list(errors))}",
                    {"errors": [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]},
                ) from None
        return value

    def parsed_params(self) -> BaseModel:
        """The params validated by the kind's ``params_model`` (detectors build themselves from it)."""
        model = registry.params_model(self.kind)
        if model is None:
            raise KeyError(f"no detector kind {self.kind!r} takes params")
        return model.model_validate(self.params)


class ForecastSpec(StrictModel):
    """DESIGN.md shorthand: ``forecast: {series, limit, fraction, within}`` = a forecast detector."""

    series: str = Field(min_length=1)
    limit: float | str
    fraction: float = Field(default=1.0, gt=0, le=1)
    within: Duration


# ----------------------------------------------------------------------------------------- actions


class DrainParams(StrictModel):
    wait: Duration = Field(
        default=5.0, description="settle time after weight 0, for load balancers that cannot confirm idleness"
    )
    max_inflight_wait: Duration = Field(default=30.0, description="give up waiting for in-flight requests")


class RestartParams(StrictModel):
    stop_timeout: Duration = Field(default=10.0, description="SIGTERM grace before SIGKILL (Docker's default)")


class AlertParams(StrictModel):
    severity: Severity | None = Field(default=None, description="defaults to the rule's severity")
    receiver: str | None = None
    annotations: dict[str, str] = Field(default_factory=dict)


class VerifyParams(StrictModel):
    settle: Duration = Field(default=5.0, description="wait before checking model status and a smoke prediction")


class RecreateParams(StrictModel):
    pass


class _Action(StrictModel):
    name: ClassVar[str]
    bare: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _expand_bare(cls, data: Any) -> Any:
        """``- drain`` and ``- drain:`` (null) both mean ``{drain: {}}``: the default parameters."""
        if cls.bare and data == cls.name:
            return {cls.name: {}}
        if cls.bare and isinstance(data, dict) and data.get(cls.name, {}) is None:
            return {cls.name: {}}
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.bare:
            return {"anyOf": [{"const": cls.name}, schema], "title": cls.__name__}
        return schema


class DrainAction(_Action):
    """Take the replica out of the load balancer (weight 0) and wait for in-flight requests."""

    name: ClassVar[str] = "drain"
    bare: ClassVar[bool] = True
    drain: DrainParams = Field(default_factory=DrainParams)


class RestartAction(_Action):
    """Restart the container."""

    name: ClassVar[str] = "restart"
    bare: ClassVar[bool] = True
    restart: RestartParams = Field(default_factory=RestartParams)


class AlertAction(_Action):
    """Send an alert (Alertmanager or webhook)."""

    name: ClassVar[str] = "alert"
    bare: ClassVar[bool] = True
    alert: AlertParams = Field(default_factory=AlertParams)


class VerifyAction(_Action):
    """Check model status, version and a smoke prediction before restoring weight."""

    name: ClassVar[str] = "verify"
    bare: ClassVar[bool] = True
    verify: VerifyParams = Field(default_factory=VerifyParams)


class RecreateAction(_Action):
    """Remove and create the container again from its image and config."""

    name: ClassVar[str] = "recreate"
    bare: ClassVar[bool] = True
    recreate: RecreateParams = Field(default_factory=RecreateParams)


class WeightAction(_Action):
    """Set the replica's load-balancer weight (0 drains without waiting)."""

    name: ClassVar[str] = "weight"
    weight: int = Field(ge=0, le=1000)


class HoldAction(_Action):
    """Keep the replica in a state (drained) instead of restoring it: for failures a restart won't fix."""

    name: ClassVar[str] = "hold"
    hold: Literal["drained"]


_ACTION_TYPES: tuple[type[_Action], ...] = (
    AlertAction,
    DrainAction,
    HoldAction,
    RecreateAction,
    RestartAction,
    VerifyAction,
    WeightAction,
)
ACTION_NAMES: tuple[str, ...] = tuple(sorted(t.name for t in _ACTION_TYPES))
_BARE_ACTIONS = frozenset(t.name for t in _ACTION_TYPES if t.bare)


def _action_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value in _BARE_ACTIONS else None
    if isinstance(value, dict) and len(value) == 1:
        key = next(iter(value))
        return key if key in ACTION_NAMES else None
    return None


def _check_action_shape(value: Any) -> Any:
    """Explain a malformed action in words before the union gets to say 'no tag matched'."""
    valid = ", ".join(ACTION_NAMES)
    if isinstance(value, str):
        if value in ACTION_NAMES and value not in _BARE_ACTIONS:
            example = "{weight: 0}" if value == "weight" else "{hold: drained}"
            raise PydanticCustomError("action", f"action {value!r} needs a parameter, e.g. {example}")
        if value not in ACTION_NAMES:
            raise PydanticCustomError("action", f"unknown action {value!r}; valid actions: {valid}")
    elif isinstance(value, dict):
        if len(value) != 1:
            keys = ", ".join(str(k) for k in value) or "none"
            raise PydanticCustomError("action", f"an action mapping has exactly one key (the action); got: {keys}")
        key = next(iter(value))
        if key not in ACTION_NAMES:
            raise PydanticCustomError("action", f"unknown action {key!r}; valid actions: {valid}")
    else:
        raise PydanticCustomError("action", f"an action is a name or a one-key mapping; valid actions: {valid}")
    return value


Action = Annotated[
    Annotated[AlertAction, Tag("alert")]
    | Annotated[DrainAction, Tag("drain")]
    | Annotated[HoldAction, Tag("hold")]
    | Annotated[RecreateAction, Tag("recreate")]
    | Annotated[RestartAction, Tag("restart")]
    | Annotated[VerifyAction, Tag("verify")]
    | Annotated[WeightAction, Tag("weight")],
    Discriminator(
        _action_name,
        custom_error_type="action",
        custom_error_message=f"unknown action; valid actions: {', '.join(ACTION_NAMES)}",
    ),
    BeforeValidator(_check_action_shape),
]
"""One step of a rule's ``then``; bare names take default parameters."""


# ------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a rule was written, for messages that send a reader back to the YAML."""

    file: str
    line: int
    col: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class RuleBase(StrictModel):
    """What every rule has, whatever its condition."""

    kind: ClassVar[str]

    id: str = Field(pattern=RULE_ID_PATTERN, max_length=128)
    description: str = ""
    severity: Severity = Severity.WARNING
    predicts: Predicts | None = None
    lifecycle: LifecycleTag | None = None
    for_: Duration | None = Field(default=None, alias="for", description="how long the condition must hold")
    keep_firing_for: Duration = Field(default=0.0, description="hold firing this long after it clears")
    labels: dict[str, str] = Field(
        default_factory=dict, description="added to the labels of the incident's alert (routing, team, tier)"
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="added to the incident alert's annotations; $replica, $service, $target, $rule, $predicts, "
        "$eta and $incident are filled in",
    )
    runbook_url: str | None = Field(
        default=None, pattern=r"^https?://", description="the alert's runbook_url annotation: what to do when paged"
    )
    then: list[Action] = Field(default_factory=list)

    _origin: Origin | None = PrivateAttr(default=None)

    @field_validator("then")
    @classmethod
    def _then_needs_predicts(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        if value and info.data.get("lifecycle") is not None:
            raise PydanticCustomError(
                "then_on_lifecycle",
                "then is only allowed on rules that predict a failure (predicts:), not on lifecycle rules",
            )
        return value

    @model_validator(mode="after")
    def _one_classification(self) -> RuleBase:
        if self.predicts is not None and self.lifecycle is not None:
            raise PydanticCustomError("classification", "a rule has predicts or lifecycle, not both")
        if self.predicts is None and self.lifecycle is None:
            raise PydanticCustomError(
                "classification", "a rule needs predicts (a failure it foresees) or lifecycle (a tag)"
            )
        if self.lifecycle is not None and self.kind != "match":
            raise PydanticCustomError("classification", "lifecycle tags classify log lines: use them with match")
        return self

    @property
    def pending_for(self) -> float:
        """Seconds the condition must hold before firing (the rule's ``for`` or its threshold's)."""
        return self.for_ or 0.0

    @property
    def origin(self) -> Origin | None:
        """Where the rule was loaded from; None for rules built in code."""
        return self._origin

    def with_origin(self, origin: Origin) -> None:
        """Record where the rule came from (the loader calls this once)."""
        self._origin = origin


class MatchRule(RuleBase):
    """Fires on log lines: a literal (preferred) or RE2-safe regex, optionally N within a window."""

    kind: ClassVar[str] = "match"
    match: LogMatch
    when: When | None = None


class _ThresholdFor(RuleBase):
    threshold: _Bound

    @model_validator(mode="after")
    def _for_in_one_place(self) -> _ThresholdFor:
        if self.for_ is not None and self.threshold.for_ is not None:
            raise PydanticCustomError(
                "for_twice", "for is set both on the rule and in threshold; keep one (they mean the same)"
            )
        return self

    @property
    def pending_for(self) -> float:
        return self.for_ if self.for_ is not None else (self.threshold.for_ or 0.0)


class ThresholdRule(_ThresholdFor):
    """Fires when a named series crosses a bound (for ``for`` seconds)."""

    kind: ClassVar[str] = "threshold"
    threshold: SeriesThreshold


class PromQLRule(_ThresholdFor):
    """Fires per target when its series of a PromQL query crosses a bound."""

    kind: ClassVar[str] = "promql"
    promql: str = Field(min_length=1)
    threshold: PromThreshold
    every: Duration | None = Field(default=None, description="query interval (default: the scrape interval)")


class EventRule(RuleBase):
    """Fires on Docker lifecycle events, e.g. 3 restarts within 10m."""

    kind: ClassVar[str] = "event"
    event: EventMatch


class DetectorRule(RuleBase):
    """Fires when a registered statistical detector says so."""

    kind: ClassVar[str] = "detector"
    detector: DetectorSpec

    def detector_spec(self) -> DetectorSpec:
        return self.detector


class ForecastRule(RuleBase):
    """The ``forecast:`` shorthand, a detector of kind ``forecast``."""

    kind: ClassVar[str] = "forecast"
    forecast: ForecastSpec

    def detector_spec(self) -> DetectorSpec:
        """The equivalent ``detector: {kind: forecast, ...}``, so one code path builds both."""
        spec = self.forecast
        params = {"limit": spec.limit, "fraction": spec.fraction, "within": format_duration(spec.within)}
        return DetectorSpec.model_construct(kind="forecast", series=self.forecast.series, params=params)


CONDITION_KEYS: tuple[str, ...] = ("match", "threshold", "promql", "event", "detector", "forecast")
RULE_KINDS = CONDITION_KEYS


def _rule_kind(value: Any) -> str | None:
    if isinstance(value, RuleBase):
        return value.kind
    if not isinstance(value, dict):
        return None
    present = [k for k in CONDITION_KEYS if k in value]
    if "promql" in present and "threshold" in present:
        present.remove("threshold")
    return present[0] if len(present) == 1 else None


def _check_one_condition(value: Any) -> Any:
    """Say which conditions are missing or clashing, instead of a generic union error."""
    if isinstance(value, RuleBase):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("rule", "a rule is a mapping with id, a condition and predicts or lifecycle")
    present = [k for k in CONDITION_KEYS if k in value]
    if "promql" in present and "threshold" in present:
        present.remove("threshold")
    if not present:
        raise PydanticCustomError(
            "condition", f"rule has no condition: give exactly one of {', '.join(CONDITION_KEYS)}"
        )
    if len(present) > 1:
        raise PydanticCustomError(
            "condition", f"rule has more than one condition ({', '.join(present)}): give exactly one"
        )
    return value


Rule = Annotated[
    Annotated[MatchRule, Tag("match")]
    | Annotated[ThresholdRule, Tag("threshold")]
    | Annotated[PromQLRule, Tag("promql")]
    | Annotated[EventRule, Tag("event")]
    | Annotated[DetectorRule, Tag("detector")]
    | Annotated[ForecastRule, Tag("forecast")],
    Discriminator(
        _rule_kind,
        custom_error_type="condition",
        custom_error_message=f"a rule needs exactly one condition: {', '.join(CONDITION_KEYS)}",
    ),
    BeforeValidator(_check_one_condition),
]
"""A rule: common fields plus exactly one condition, the kind picked by which key is present."""


# ------------------------------------------------------------------------------------------- packs


class MaxRestarts(StrictModel):
    count: int = Field(ge=0)
    per: Duration


class Defaults(StrictModel):
    """Guard-rail defaults the policy applies to this pack's plans (see DESIGN.md, Policy)."""

    cooldown: Duration = 600.0
    max_restarts: MaxRestarts = Field(default_factory=lambda: MaxRestarts(count=3, per=3600.0))
    max_unavailable: int = Field(default=1, ge=0)
    min_healthy: int = Field(default=1, ge=0)
    severity: Severity = Severity.WARNING


CHECK_DUPLICATE_IDS = "check_duplicate_ids"
"""Validation-context key: the loader turns the in-pack id check off and does it across files."""


SERIES_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
WINDOW_PLACEHOLDER = "$window"


class SeriesDef(StrictModel):
    """A named series computed by Prometheus, one sample per target and query interval.

    Detectors and threshold rules name series (``error_ratio``, ``latency_p99_seconds``,
    ``memory_working_set_bytes``); this is where a series that no Docker stats give comes from.
    ``$window`` in the query is replaced by the configured rate window (``prometheus_window``),
    because a sound window depends on the scrape interval of the deployment, not on the rule.
    """

    name: str = Field(pattern=SERIES_NAME_PATTERN, max_length=128)
    promql: str = Field(min_length=1, max_length=4096)
    description: str = ""
    target_label: str | None = Field(
        default=None, description="label naming the container (default: the configured prometheus_target_label)"
    )

    def expr(self, window: str) -> str:
        return self.promql.replace(WINDOW_PLACEHOLDER, window)


class RulePack(StrictModel):
    """One YAML file: a named set of rules and the guard-rail defaults for their plans."""

    pack: str = Field(pattern=NAME_PATTERN, max_length=64)
    description: str = ""
    defaults: Defaults = Field(default_factory=Defaults)
    series: list[SeriesDef] = Field(default_factory=list, description="PromQL-defined series the rules read")
    rules: list[Rule] = Field(min_length=1)

    _source: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _inherit_severity(cls, data: Any) -> Any:
        """Rules without ``severity`` take the pack's default (when that default itself is valid)."""
        if not isinstance(data, dict):
            return data
        defaults = data.get("defaults")
        severity = defaults.get("severity") if isinstance(defaults, dict) else None
        rules = data.get("rules")
        if severity not in {s.value for s in Severity} or not isinstance(rules, list):
            return data
        new_rules = [{**r, "severity": severity} if isinstance(r, dict) and "severity" not in r else r for r in rules]
        return {**data, "rules": new_rules}

    @model_validator(mode="after")
    def _unique_ids(self, info: ValidationInfo) -> RulePack:
        if isinstance(info.context, dict) and not info.context.get(CHECK_DUPLICATE_IDS, True):
            return self
        seen: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.id in seen:
                raise PydanticCustomError(
                    "duplicate_id", f"duplicate rule id {rule.id!r} (rules[{seen[rule.id]}] and rules[{index}])"
                )
            seen[rule.id] = index
        names: dict[str, int] = {}
        for index, series in enumerate(self.series):
            if series.name in names:
                raise PydanticCustomError(
                    "duplicate_series",
                    f"series {series.name!r} defined twice (series[{names[series.name]}] and series[{index}])",
                )
            names[series.name] = index
        return self

    @property
    def source(self) -> str | None:
        """The file this pack was loaded from; None for packs built in code."""
        return self._source

    def rule(self, rule_id: str) -> RuleBase:
        """Look a rule up by id (KeyError if absent)."""
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)


AnyRule = MatchRule | ThresholdRule | PromQLRule | EventRule | DetectorRule | ForecastRule


def schema_json() -> dict[str, Any]:
    """The JSON Schema of a pack, for ``# yaml-language-server: $schema=...`` and ``rules schema``."""
    schema = RulePack.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "serving-watcher rule pack"
    return schema
