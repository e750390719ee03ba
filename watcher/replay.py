"""The replay driver: recorded logs, events and series through the same engine, on simulated time.

Notebooks and the foresight evaluation call :func:`replay` as a library; ``watcher replay`` wraps
it. The clock jumps to each signal's timestamp and the engine ticks every ``step_s`` in between,
so pending timers and windows behave exactly as they would have live.

Recorded input is JSON lines, one signal per line::

    {"type": "log", "ts": 1714557600.1, "target": "tfs-1", "service": "m", "message": "..."}
    {"type": "lifecycle", "ts": ..., "target": "tfs-1", "kind": "die", "exit_code": 137}
    {"type": "sample", "ts": ..., "target": "tfs-1", "series": "memory_ratio", "value": 0.93}

or plain log files (one container each), whose lines carry their own timestamps.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.model import MAX_LINE_BYTES, Finding, Lifecycle, LifecycleKind, LogRecord, Sample, Signal, Target
from watcher.parsers import parse as parse_line
from watcher.rulepack.compile import RuleSet
from watcher.rulepack.schema import RulePack


class ReplayInputError(ValueError):
    """A recorded input line is not a signal; the message names file and line."""


@dataclass(frozen=True)
class ReplayResult:
    findings: list[Finding]
    signals: int
    start: float | None
    end: float | None


def _target(obj: dict[str, Any]) -> Target:
    return Target(container=str(obj["target"]), engine=str(obj.get("engine", "local")), service=obj.get("service"))


def signal_from_json(obj: dict[str, Any]) -> Signal:
    kind = obj.get("type")
    ts = float(obj["ts"])
    if not math.isfinite(ts):
        raise ValueError(f"ts must be a finite number of seconds, got {obj['ts']!r}")
    if kind == "log":
        return LogRecord(target=_target(obj), ts=ts, message=str(obj["message"])[:MAX_LINE_BYTES])
    if kind == "lifecycle":
        exit_code = obj.get("exit_code")
        return Lifecycle(
            target=_target(obj),
            ts=ts,
            kind=LifecycleKind(obj["kind"]),
            exit_code=None if exit_code is None else int(exit_code),
            health=obj.get("health"),
        )
    if kind == "sample":
        target = _target(obj) if obj.get("target") else None
        return Sample(
            series=str(obj["series"]),
            ts=ts,
            value=float(obj["value"]),
            target=target,
            labels={str(k): str(v) for k, v in (obj.get("labels") or {}).items()},
            stale=bool(obj.get("stale", False)),
        )
    raise ValueError(f"unknown signal type {kind!r} (expected log, lifecycle or sample)")


def is_recording(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def read_jsonl(path: Path, on_meta: Callable[[dict[str, Any]], None] | None = None) -> Iterator[Signal]:
    """Signals from a recording (``.jsonl`` or ``.jsonl.gz``). ``meta`` lines (ground truth) go to
    ``on_meta`` (skipped without one); an error there is reported with file and line like any other."""
    opener = gzip.open if path.name.endswith(".gz") else open
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                yield from _signal_line(path, n, line, on_meta)
    except (OSError, EOFError) as exc:  # not gzip, truncated, unreadable
        raise ReplayInputError(f"{path}:{n + 1}: cannot read: {exc}") from None


def _signal_line(path: Path, n: int, line: str, on_meta: Callable[[dict[str, Any]], None] | None) -> Iterator[Signal]:
    """The signal of one recording line (none for blanks and meta lines), or ``file:line: why``."""
    if not line.strip():
        return
    try:
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("a signal is a JSON object")
        if obj.get("type") == "meta":
            if on_meta is not None:
                on_meta(obj)
            return
        signal = signal_from_json(obj)
    except KeyError as exc:
        raise ReplayInputError(f"{path}:{n}: missing field {exc}") from None
    except (ValueError, TypeError, IndexError) as exc:
        raise ReplayInputError(f"{path}:{n}: {exc}") from None
    yield signal


def read_log_file(path: Path, target: Target, start: float = 0.0) -> Iterator[LogRecord]:
    """Plain log lines; a line without a timestamp inherits the previous one's, and the lines
    before the first timestamp take that first one (not ``start``: a head of untimed lines would
    otherwise sit decades before the rest). A file with no timestamp at all is all at ``start``."""
    ts: float | None = None
    untimed: list[str] = []  # the head of the file, until a line says what time it is
    with path.open(encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")[:MAX_LINE_BYTES]
            if not line:
                continue
            parsed_ts = parse_line(line).ts
            if parsed_ts is not None and math.isfinite(parsed_ts):
                ts = parsed_ts if ts is None else max(ts, parsed_ts)
            if ts is None:
                untimed.append(line)
                continue
            for head in untimed:
                yield LogRecord(target=target, ts=ts, message=head)
            untimed = []
            yield LogRecord(target=target, ts=ts, message=line)
    for head in untimed:
        yield LogRecord(target=target, ts=start, message=head)


def replay(
    packs: RuleSet | Sequence[RulePack],
    signals: Iterable[Signal],
    step_s: float = 1.0,
    upstreams: dict[str, Target] | None = None,
    engine: Engine | None = None,
    load_balancers: Iterable[Target] = (),
) -> ReplayResult:
    """Feed signals in time order; the engine ticks on a grid of ``step_s`` from the first signal.

    Grid points before :meth:`Engine.next_tick_at` are skipped (a tick there changes nothing), so
    a month of silence costs a few ticks while every ``for``, ``within`` and ``keep_firing_for``
    deadline is still evaluated at the grid point it falls on: the findings are those of ticking
    every step. ``packs`` is a compiled :class:`RuleSet` or packs (compiled here, as lint does).
    ``upstreams`` attributes lines to replicas only when they come from ``load_balancers`` (the
    load balancer's own logs), as live."""
    if not (math.isfinite(step_s) and step_s > 0):
        raise ValueError(f"step must be a positive number of seconds, got {step_s!r}")
    ordered = sorted(signals, key=lambda s: s.ts)
    if not ordered:
        return ReplayResult([], 0, None, None)
    start = ordered[0].ts
    clock = ManualClock(start)
    if engine is None:
        engine = Engine(packs, clock, upstreams=upstreams, load_balancers=load_balancers)
    else:
        engine.clock = clock
    findings: list[Finding] = []
    n = 1  # index of the next grid point, start + n * step_s (multiplied: no drift from summing)
    for signal in ordered:
        while (at := start + n * step_s) <= signal.ts:
            due = min(engine.next_tick_at(clock.now()), signal.ts)
            # stop one grid point short of the deadline: rounding can never make a tick late
            skip = math.floor((due - at) / step_s) - 1
            if skip > 0:
                n += skip
                continue
            clock.set(at)
            findings.extend(engine.tick())
            n += 1
        clock.set(max(clock.now(), signal.ts))
        findings.extend(engine.feed(signal))
    clock.set(max(clock.now(), start + n * step_s))
    findings.extend(engine.tick())
    return ReplayResult(findings, len(ordered), start, ordered[-1].ts)
