"""``watcher record``: the configured fleet's past, written as a recording that ``watcher replay`` reads.

Tuning thresholds on the testbed's recordings says little about a fleet whose servers log, leak and
fail differently. This reads, for a past stretch ``[since, until]``, what the live watcher would have
read from the same sources, each with its own timestamps, so replaying the file runs the engine on
the signals it saw (or would have seen) live:

* the logs of every container that matches the label selector, through each engine's API with
  Docker's own timestamps (``since``/``until``; the same line splitting, capping and timestamp
  handling as :class:`~watcher.sources.docker_logs.DockerLogsSource`);
* the lifecycle events of those containers, through the same API (``since``/``until``), decoded as
  :func:`~watcher.sources.docker_events.to_lifecycle` decodes them live;
* a Prometheus range query for every query the compiled packs define (``RuleSet.queries``), at each
  query's own step (a PromQL rule's ``every``, else ``prometheus_interval_s``): the points an
  instant query at that interval would have returned. A series that is missing at a step after it
  had a value is written once as stale, as the live source marks it.

What cannot be had after the fact is left out, and said so in the ``meta`` header: Docker stats
(Docker keeps no history of them), host log files (``log_files``), and containers already removed.

Bounded: at most ``max_lines`` log lines and ``max_samples`` samples; past either the recording
stops with :class:`RecordLimitError` (a message saying which bound and how to narrow it) and no
file is left behind, because a recording cut short at an arbitrary point would tune thresholds on
half a fleet. Nothing secret is written: URLs in the header are redacted and every configured
secret is masked in log lines.

The format is :mod:`watcher.replay`'s, with one ``meta`` line first. Its ``failures`` are Docker's
account of what failed (``oom``; a non-zero ``die`` not explained by an OOM kill, ``crash``;
``health_status: unhealthy``), the ground truth the threshold-tuning notebook scores against.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker
import requests

from watcher.inventory import LabelNames, WatchedContainer, make_clients
from watcher.model import MAX_LINE_BYTES, Lifecycle, LifecycleKind, LogRecord, Sample, Signal, Target
from watcher.redact import redact_text, redact_url
from watcher.rulepack.compile import RuleSet
from watcher.rulepack.durations import DurationError, parse_duration
from watcher.sources.docker_events import to_lifecycle
from watcher.sources.docker_logs import LineSplitter, cap_message, split_timestamp
from watcher.sources.prometheus import PromQuery
from watcher.timefmt import parse_iso, parse_rfc3339_ns

DEFAULT_MAX_LINES = 2_000_000
DEFAULT_MAX_SAMPLES = 2_000_000
PROMETHEUS_MAX_POINTS = 10_000  # Prometheus refuses a range query of more than 11,000 points per series
OOM_DIE_WINDOW_S = 5.0  # the die 137 that follows an oom event is the same failure


class RecordError(ValueError):
    """The recording cannot be made (bad time range, a source that does not answer)."""


class RecordLimitError(RecordError):
    """A bound was reached; the message names it and how to narrow the recording."""


@dataclass(frozen=True)
class RecordLimits:
    max_lines: int = DEFAULT_MAX_LINES
    max_samples: int = DEFAULT_MAX_SAMPLES


@dataclass
class _Budget:
    """Counts what was recorded and stops the recording at the first bound it passes."""

    limits: RecordLimits
    since: float
    until: float
    lines: int = 0
    samples: int = 0
    events: int = 0

    def line(self) -> None:
        self.lines += 1
        if self.lines > self.limits.max_lines:
            raise RecordLimitError(self._message("log lines", self.limits.max_lines, "--max-lines"))

    def sample(self) -> None:
        self.samples += 1
        if self.samples > self.limits.max_samples:
            raise RecordLimitError(self._message("samples", self.limits.max_samples, "--max-samples"))

    def _message(self, what: str, limit: int, option: str) -> str:
        span = self.until - self.since
        return (
            f"more than {limit} {what} in the {span:.0f} s from {_iso(self.since)} to {_iso(self.until)}: "
            f"nothing written; record a shorter stretch (--since/--until), fewer containers "
            f"(label_selector), or raise {option}"
        )


@dataclass(frozen=True)
class RecordSources:
    """What to record from: the settings' engines, selector and Prometheus, and the compiled packs."""

    ruleset: RuleSet | None = None  # None: no Prometheus queries
    engines: Mapping[str, Any] | None = None  # as make_clients takes them (URLs or clients)
    labels: LabelNames = field(default_factory=LabelNames)
    prometheus_url: str | None = None
    prometheus_interval_s: float = 15.0
    secrets: Sequence[str] = ()
    timeout_s: float = 30.0


@dataclass(frozen=True)
class RecordSummary:
    path: Path
    since: float
    until: float
    containers: list[str]
    lines: int
    events: int
    samples: int
    failures: list[dict[str, Any]]


# -- time range ---------------------------------------------------------------------------------------
def parse_when(text: str, now: float) -> float:
    """``2h`` / ``90m`` (that long before ``now``), an RFC 3339 / ISO time, or epoch seconds."""
    t = text.strip()
    try:
        return now - parse_duration(t)
    except DurationError:
        pass
    iso = parse_iso(t)
    if iso is not None:
        return iso
    try:
        value = float(t)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RecordError(f"{text!r} is not a time: give a duration before now (2h, 30m), an ISO time or epoch seconds")
    return value


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- the replay format -----------------------------------------------------------------------------------
def signal_to_json(signal: Signal) -> dict[str, Any]:
    """One signal as a recording line (:func:`watcher.replay.signal_from_json` reads it back)."""
    out: dict[str, Any] = {"ts": round(signal.ts, 6)}
    target: Target | None = signal.target
    if target is not None:
        out.update(target=target.container, engine=target.engine)
        if target.service:
            out["service"] = target.service
    if isinstance(signal, LogRecord):
        out.update(type="log", message=signal.message)
    elif isinstance(signal, Lifecycle):
        out.update(type="lifecycle", kind=signal.kind.value)
        if signal.exit_code is not None:
            out["exit_code"] = signal.exit_code
        if signal.health is not None:
            out["health"] = signal.health
    else:
        out.update(type="sample", series=signal.series, value=signal.value)
        if signal.labels:
            out["labels"] = dict(signal.labels)
        if signal.stale:
            out["stale"] = True
    return {"type": out.pop("type"), **out}


def write_recording(path: Path, meta: Mapping[str, Any], signals: Iterable[Signal]) -> None:
    """The meta line, then the signals in time order; gzip when ``path`` ends in ``.gz``. Written to a
    temporary file renamed into place, so a failed recording leaves no half file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    opener: Callable[..., IO[str]] = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(tmp, "wt", encoding="utf-8") as f:
            f.write(json.dumps({"type": "meta", **meta}) + "\n")
            for s in sorted(signals, key=lambda s: s.ts):
                f.write(json.dumps(signal_to_json(s), separators=(",", ":")) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def failures_from(signals: Iterable[Signal], since: float = -math.inf) -> list[dict[str, Any]]:
    """Docker's account of what failed: oom (the die 137 right after it is the same failure), other
    non-zero die (crash), health_status unhealthy."""
    failures: list[dict[str, Any]] = []
    last_oom: dict[str, float] = {}
    for s in sorted((s for s in signals if isinstance(s, Lifecycle)), key=lambda s: s.ts):
        if s.ts < since:
            continue
        name = s.target.container
        if s.kind is LifecycleKind.OOM:
            # one kill can report several oom events (one per process the kernel killed in the
            # cgroup, milliseconds apart): the same failure
            if s.ts - last_oom.get(name, -math.inf) > OOM_DIE_WINDOW_S:
                failures.append({"target": name, "ts": s.ts, "kind": "oom", "source": "docker"})
            last_oom[name] = s.ts
        elif s.kind is LifecycleKind.DIE and s.exit_code not in (None, 0):
            if s.ts - last_oom.get(name, -math.inf) > OOM_DIE_WINDOW_S:
                failures.append({"target": name, "ts": s.ts, "kind": "crash", "source": "docker"})
        elif s.kind is LifecycleKind.HEALTH_STATUS and s.health == "unhealthy":
            failures.append({"target": name, "ts": s.ts, "kind": "unhealthy", "source": "docker"})
    return failures


# -- Docker ---------------------------------------------------------------------------------------------
def selected_containers(clients: Mapping[str, docker.DockerClient], labels: LabelNames) -> list[WatchedContainer]:
    """Every container (running or not) that matches the selector, on every engine: the inventory's
    listing, once."""
    found: list[WatchedContainer] = []
    for engine, client in clients.items():
        listed = client.containers.list(all=True, filters={"label": list(labels.selector)}, ignore_removed=True)
        found.extend(WatchedContainer.of(engine, c, labels) for c in listed)
    return sorted(found, key=lambda c: c.key)


def container_logs(
    client: docker.DockerClient, container: WatchedContainer, since: float, until: float, secrets: Sequence[str] = ()
) -> Iterator[LogRecord]:
    """The container's log lines in ``[since, until]``, each at Docker's timestamp, split and capped
    as the live follower does. docker-py hands over the frames' payloads without saying which
    stream each came from, so stdout and stderr share one splitter: Docker writes a line per frame
    (a line of more than 16 KiB as several), so only such a long line interleaved with the other
    stream could be cut differently."""
    stream = client.api.logs(
        container.id, stdout=True, stderr=True, stream=True, follow=False, timestamps=True, since=since, until=until
    )
    splitter = LineSplitter()
    try:
        for chunk in stream:
            if isinstance(chunk, str):  # a TTY container's raw stream comes decoded
                chunk = chunk.encode("utf-8")
            for raw, truncated in splitter.feed(chunk):
                record = _log_record(container.target, raw, truncated, since, until, secrets)
                if record is not None:
                    yield record
        rest = splitter.flush()
        if rest is not None:
            record = _log_record(container.target, rest[0], rest[1], since, until, secrets)
            if record is not None:
                yield record
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _log_record(
    target: Target, raw: bytes, truncated: bool, since: float, until: float, secrets: Sequence[str]
) -> LogRecord | None:
    parts = split_timestamp(raw)
    if parts is None:
        return None
    ts_text, body = parts
    ts = parse_rfc3339_ns(ts_text) / 1e9
    if not since <= ts <= until:  # Docker's since/until are whole-second inclusive on some versions
        return None
    message, truncated = cap_message(body, truncated, MAX_LINE_BYTES)
    if secrets:
        message = redact_text(message, secrets)
    fields = {"truncated": "1"} if truncated else {}
    return LogRecord(target=target, ts=ts, message=message, fields=fields)


def engine_events(
    client: docker.DockerClient, engine: str, labels: LabelNames, since: float, until: float
) -> Iterator[Lifecycle]:
    """The selected containers' lifecycle events in ``[since, until]`` (the stream ends at ``until``)."""
    filters = {"type": "container", "label": list(labels.selector)}
    stream = client.api.events(since=since, until=until, filters=filters, decode=True)
    try:
        for event in stream:
            signal = to_lifecycle(event, engine, labels.service)
            if signal is not None and since <= signal.ts <= until:
                yield signal
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


# -- Prometheus --------------------------------------------------------------------------------------------
def step_of(query: PromQuery, interval_s: float) -> float:
    """The query's own interval, as the live source runs it."""
    return query.interval_s if query.interval_s is not None else interval_s


def range_samples(
    http: requests.Session,
    url: str,
    query: PromQuery,
    since: float,
    until: float,
    step_s: float,
    resolve: Callable[[Mapping[str, str]], Target | None],
    timeout_s: float = 30.0,
) -> Iterator[Sample]:
    """The query's points on the grid ``since + k * step_s`` (in chunks Prometheus accepts), as the
    live source's samples: series of unwatched containers dropped, NaN skipped, and a series that
    is missing at a step after it had a value written once as stale, with its last value."""
    last: dict[tuple[tuple[str, str], ...], Sample] = {}
    chunk_s = step_s * (PROMETHEUS_MAX_POINTS - 1)
    start = round(since, 3)
    while start <= until:
        end = min(until, start + chunk_s)
        result = _query_range(http, url, query, start, end, step_s, timeout_s)
        points: dict[float, list[tuple[tuple[tuple[str, str], ...], dict[str, str], float]]] = {}
        for element in result:
            labels = {str(k): str(v) for k, v in (element.get("metric") or {}).items()}
            key = tuple(sorted(labels.items()))
            for ts_raw, value_raw in element.get("values") or []:
                points.setdefault(round(float(ts_raw), 3), []).append((key, labels, float(value_raw)))
        # Prometheus evaluates at start + k * step to the millisecond: the same keys here
        grid = [round(start + k * step_s, 3) for k in range(math.floor((end - start) / step_s + 1e-9) + 1)]
        for at in sorted(set(grid) | set(points)):
            present = set()
            for key, labels, value in points.get(at, []):
                present.add(key)
                target = resolve(labels)
                sample = Sample(series=query.id, ts=at, value=value, target=target, labels=labels)
                last[key] = sample
                if not math.isnan(value):
                    yield sample
            for key in [k for k in last if k not in present]:
                gone = last.pop(key)
                yield Sample(gone.series, at, gone.value, gone.target, gone.labels, stale=True)
        start = round(grid[-1] + step_s, 3)


def _query_range(
    http: requests.Session, url: str, query: PromQuery, start: float, end: float, step_s: float, timeout_s: float
) -> list[dict[str, Any]]:
    params = {"query": query.expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
    where = redact_url(url)
    try:
        r = http.get(f"{url.rstrip('/')}/api/v1/query_range", params=params, timeout=timeout_s)
        body = r.json()
    except (requests.RequestException, ValueError) as exc:
        raise RecordError(f"prometheus {where}: query {query.id!r}: {type(exc).__name__}") from None
    if body.get("status") != "success":
        raise RecordError(f"prometheus {where}: query {query.id!r}: {body.get('error') or r.status_code}")
    result = (body.get("data") or {}).get("result") or []
    return [e for e in result if isinstance(e, dict)]


# -- the recording ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Collected:
    """What a stretch held: the signals and the ``meta`` header that describes them."""

    signals: list[Signal]
    meta: dict[str, Any]
    containers: list[str]
    lines: int
    events: int
    samples: int


def collect(
    sources: RecordSources,
    since: float,
    until: float,
    limits: RecordLimits | None = None,
    clients: Mapping[str, docker.DockerClient] | None = None,
) -> Collected:
    """Read ``[since, until]`` from every configured source (see the module docstring), within the limits."""
    if not (math.isfinite(since) and math.isfinite(until)) or until <= since:
        raise RecordError(f"the range is empty: since {_iso(since)} is not before until {_iso(until)}")
    budget = _Budget(limits or RecordLimits(), since, until)
    clients = clients if clients is not None else make_clients(sources.engines)
    containers = selected_containers(clients, sources.labels)
    signals: list[Signal] = []
    for c in containers:
        for line in container_logs(clients[c.engine], c, since, until, sources.secrets):
            budget.line()
            signals.append(line)
    for engine, client in clients.items():
        for event in engine_events(client, engine, sources.labels, since, until):
            budget.events += 1
            signals.append(event)
    queries = list(sources.ruleset.queries) if sources.prometheus_url and sources.ruleset else []
    if sources.prometheus_url:
        by_name = {c.name: c.target for c in containers}
        http = requests.Session()
        http.trust_env = False  # as the live source: never through a proxy from the environment
        for q in queries:
            resolve = _resolver(q, by_name)
            step = step_of(q, sources.prometheus_interval_s)
            for sample in range_samples(
                http, sources.prometheus_url, q, since, until, step, resolve, sources.timeout_s
            ):
                budget.sample()
                signals.append(sample)
    meta = {
        "recorded_by": "watcher record",
        "since": round(since, 3),
        "until": round(until, 3),
        "recorded_at": round(time.time(), 3),
        "engines": {name: _engine_address(client) for name, client in clients.items()},
        "label_selector": list(sources.labels.selector),
        "replicas": [c.name for c in containers],
        "prometheus": redact_url(sources.prometheus_url) if sources.prometheus_url else None,
        "queries": [
            {"id": q.id, "step_s": step_of(q, sources.prometheus_interval_s), "target_label": q.target_label}
            for q in queries
        ],
        "counts": {"lines": budget.lines, "events": budget.events, "samples": budget.samples},
        "not_recorded": ["docker stats (Docker keeps no history)", "host log files", "removed containers"],
        "failures": failures_from(signals, since),
        "healthy": [],  # unknown for a fleet: the notebook counts no false findings without it
    }
    names = [c.name for c in containers]
    return Collected(signals, meta, names, budget.lines, budget.events, budget.samples)


def record(
    sources: RecordSources,
    out: Path,
    since: float,
    until: float,
    limits: RecordLimits | None = None,
    clients: Mapping[str, docker.DockerClient] | None = None,
) -> RecordSummary:
    """Record ``[since, until]`` from every configured source into ``out``; nothing is written on an error."""
    got = collect(sources, since, until, limits, clients)
    write_recording(out, got.meta, got.signals)
    return RecordSummary(out, since, until, got.containers, got.lines, got.events, got.samples, got.meta["failures"])


def _resolver(query: PromQuery, by_name: Mapping[str, Target]) -> Callable[[Mapping[str, str]], Target | None]:
    """As the live driver resolves a series: the watched container's own Target, else dropped."""

    def resolve(labels: Mapping[str, str]) -> Target | None:
        return by_name.get(labels.get(query.target_label, "").lstrip("/"))

    return resolve


def _engine_address(client: docker.DockerClient) -> str:
    base = str(getattr(client.api, "base_url", "") or "")
    return redact_url(base) if "://" in base else "local"
