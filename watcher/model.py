"""The small vocabulary every part of the watcher speaks: targets, signals, findings.

Sources turn what they read into signals; detectors turn signals into findings; the policy turns
findings into plans. Keeping these types plain, frozen and free of I/O is what lets one engine run
live, in replay and in tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

EMPTY: Mapping[str, str] = MappingProxyType({})


class Predicts(StrEnum):
    """What a finding says is about to go wrong. A fixed vocabulary: policies key on it."""

    OOM = "oom"
    CRASH = "crash"
    LOAD_FAILURE = "load_failure"
    HTTP_5XX = "http_5xx"
    UPSTREAM_FAILURE = "upstream_failure"
    LATENCY = "latency"
    UNHEALTHY = "unhealthy"
    VERSION_MISMATCH = "version_mismatch"


class LifecycleTag(StrEnum):
    """Informational classification of a line that announces no failure."""

    STARTUP = "startup"
    MODEL_LOADED = "model_loaded"
    MODEL_UNLOADED = "model_unloaded"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Target:
    """One replica: a container on one Docker engine, member of a service (an LB upstream)."""

    container: str
    engine: str = "local"
    service: str | None = None

    @property
    def key(self) -> str:
        return f"{self.engine}/{self.container}"


SERIES_ONLY_ENGINE: Final = "prometheus"
"""The engine name of a replica known only by its Prometheus series, when no Docker engine is
configured (observe-and-alert, ``engines: {}``): ``prometheus/<pod>``. Nothing can act on it."""

MAX_LINE_BYTES: Final = 16 * 1024
"""The longest log line the watcher looks at (16 KiB, Docker's own split size). Sources cut raw
bytes there (and mark ``fields["truncated"]``); the engine, replay and the matcher cut again at
the same count, so a record built by hand or read from a file is bounded the same way and every
regex runs on bounded input."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log line. ``message`` is untrusted and already capped (:data:`MAX_LINE_BYTES`) by the source."""

    target: Target
    ts: float
    message: str
    level: str = ""  # normalised: "debug", "info", "warning", "error", "fatal" or ""
    source: str = ""  # the parser that understood it: "tfserving", "nginx", "json", ...
    fields: Mapping[str, str] = field(default_factory=lambda: EMPTY)


class LifecycleKind(StrEnum):
    OOM = "oom"
    DIE = "die"
    HEALTH_STATUS = "health_status"
    START = "start"
    RESTART = "restart"
    STOP = "stop"
    DESTROY = "destroy"


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A container lifecycle event as the engine reported it."""

    target: Target
    ts: float
    kind: LifecycleKind
    exit_code: int | None = None
    health: str | None = None  # "healthy" / "unhealthy" for HEALTH_STATUS
    attributes: Mapping[str, str] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of a series. ``stale`` marks a value that could not be refreshed."""

    series: str
    ts: float
    value: float
    target: Target | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    stale: bool = False


Signal = LogRecord | Lifecycle | Sample


@dataclass(frozen=True, slots=True)
class Finding:
    """A detector's claim: this target will fail (or is failing) in this way, this soon, because."""

    target: Target
    rule_id: str
    predicts: Predicts
    ts: float
    severity: Severity = Severity.WARNING
    score: float = 1.0
    eta_s: float | None = None  # predicted seconds to failure, None when not estimable
    evidence: tuple[str, ...] = ()
    pack: str = ""
    resolved: bool = False


def finding_to_json(f: Finding) -> dict[str, Any]:
    """A finding as the API, ``watcher replay`` and the journal write it (``target`` is derived, for readers)."""
    return {
        "ts": f.ts,
        "target": f.target.key,
        "container": f.target.container,
        "engine": f.target.engine,
        "service": f.target.service,
        "rule": f.rule_id,
        "pack": f.pack,
        "predicts": f.predicts.value,
        "severity": f.severity.value,
        "score": round(f.score, 4),
        "eta_s": f.eta_s,
        "evidence": list(f.evidence),
        "resolved": f.resolved,
    }


def finding_from_json(d: Mapping[str, Any]) -> Finding:
    """The inverse of :func:`finding_to_json` (``finding_to_json(finding_from_json(d)) == d`` for what it wrote).

    Keys it does not know (``target``, a journal's ``version_before``) are ignored, so a journal row
    written by an older watcher still loads."""
    eta = d.get("eta_s")
    return Finding(
        target=Target(str(d["container"]), engine=str(d.get("engine", "local")), service=d.get("service")),
        rule_id=str(d["rule"]),
        predicts=Predicts(d["predicts"]),
        ts=float(d["ts"]),
        severity=Severity(d.get("severity", Severity.WARNING.value)),
        score=float(d.get("score", 1.0)),
        eta_s=None if eta is None else float(eta),
        evidence=tuple(str(e) for e in d.get("evidence", ())),
        pack=str(d.get("pack", "")),
        resolved=bool(d.get("resolved", False)),
    )
