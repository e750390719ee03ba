"""Log-template novelty and rate: a line shape never seen before, or one suddenly far more frequent.

Templates are mined online with a small Drain-style miner (Drain: He et al., ICWS 2017, the
algorithm behind drain3): tokens with digits are masked as ``<*>``, lines are grouped by token
count and first token, and a line joins the most similar template of its group (share of equal
tokens >= ``similarity``), which generalises the differing positions to ``<*>``. Why our own and
not drain3: drain3 checkpoints through jsonpickle (not the plain JSON our store keeps and a
restore must reproduce exactly), pulls in more dependencies, and caps memory only by cluster
count; here every line is cut to ``max_line`` characters and ``max_tokens`` tokens, the template
table is an LRU of ``max_templates`` entries, and a group holds at most ``MAX_PER_GROUP``: a flood of
random lines costs bounded memory and bounded time per line.

Signals, per target: a template *created* after warm-up (novelty), or a template whose count in a
``rate_interval`` exceeds ``rate_ratio`` times its EWMA (+1) and ``min_count`` (rate jump). Either
keeps the condition active for ``hold`` seconds.

This detector wants every log line, not only those a rule pattern matched: it declares
``wants_all_logs = True`` for the engine.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from watcher.detectors.base import Detector, Observation
from watcher.model import LogRecord, Target
from watcher.rulepack.schema import AnyRule, Duration, LogLevel, StrictModel

WILDCARD = "<*>"
MAX_PER_GROUP = 64  # templates compared per line: bounds the cost of a line
MAX_TARGETS = 10_000


class TemplateParams(StrictModel):
    """Params of ``templates`` (no ``series``: it reads log lines)."""

    warmup: Duration = Field(default=600.0, description="time after the first line before novelty counts")
    warmup_lines: int = Field(default=200, ge=0, description="and at least this many lines")
    hold: Duration = Field(default=300.0, description="how long a novelty or a jump keeps the condition true")
    similarity: float = Field(default=0.5, gt=0, le=1)
    rate_interval: Duration = Field(default=60.0)
    rate_ratio: float = Field(default=5.0, gt=1)
    min_count: int = Field(default=20, ge=1)
    alpha: float = Field(default=0.2, gt=0, le=1, description="EWMA rate of a template's per-interval count")
    max_templates: int = Field(default=2000, ge=10, le=100_000)
    max_line: int = Field(default=512, ge=16, le=16_384)
    max_tokens: int = Field(default=48, ge=2, le=512)
    levels: list[LogLevel] | None = Field(default=None, description="only lines of these levels (default all)")
    novelty: bool = True
    rate: bool = True


def _mask(token: str) -> str:
    return WILDCARD if any(c.isdigit() for c in token) else token


class TemplateMiner:
    """Drain-style online miner with a memory bound. Template ids are stable small integers."""

    def __init__(self, *, similarity: float, max_templates: int, max_line: int, max_tokens: int) -> None:
        self.similarity = similarity
        self.max_templates = max_templates
        self.max_line = max_line
        self.max_tokens = max_tokens
        self.templates: OrderedDict[int, list[str]] = OrderedDict()  # LRU order: oldest first
        self.groups: dict[str, list[int]] = {}
        self.next_id = 0

    def tokens(self, line: str) -> list[str]:
        return [_mask(t) for t in line[: self.max_line].split()[: self.max_tokens]]

    @staticmethod
    def _group(tokens: list[str]) -> str:
        return f"{len(tokens)} {tokens[0] if tokens else ''}"

    def add(self, line: str) -> tuple[int, bool]:
        """The line's template id, and whether the template was created by this line."""
        tokens = self.tokens(line)
        gkey = self._group(tokens)
        group = self.groups.setdefault(gkey, [])
        best, best_sim = -1, -1.0
        for tid in group:
            tpl = self.templates[tid]
            same = sum(1 for a, b in zip(tpl, tokens, strict=True) if a == b and a != WILDCARD)
            wild = sum(1 for a in tpl if a == WILDCARD)
            sim = 1.0 if len(tpl) == wild else same / (len(tpl) - wild)
            if sim > best_sim:
                best, best_sim = tid, sim
        if best >= 0 and best_sim >= self.similarity:
            tpl = self.templates[best]
            for i, (a, b) in enumerate(zip(tpl, tokens, strict=True)):
                if a != b:
                    tpl[i] = WILDCARD
            self.templates.move_to_end(best)
            return best, False
        tid = self.next_id
        self.next_id += 1
        self.templates[tid] = tokens
        group.append(tid)
        if len(group) > MAX_PER_GROUP:
            self._forget(group[0])
        while len(self.templates) > self.max_templates:
            self._forget(next(iter(self.templates)))
        return tid, True

    def _forget(self, tid: int) -> None:
        tokens = self.templates.pop(tid, None)
        if tokens is None:
            return
        gkey = self._group(tokens)
        group = self.groups.get(gkey)
        if group is not None:
            if tid in group:
                group.remove(tid)
            if not group:
                del self.groups[gkey]

    def text(self, tid: int) -> str:
        return " ".join(self.templates.get(tid, []))

    def to_json(self) -> dict[str, Any]:
        return {"next_id": self.next_id, "templates": [[tid, tpl] for tid, tpl in self.templates.items()]}

    def load(self, d: dict[str, Any]) -> None:
        self.next_id = int(d.get("next_id", 0))
        self.templates.clear()
        self.groups.clear()
        for tid, tpl in d.get("templates", []):
            tokens = [str(t) for t in tpl]
            self.templates[int(tid)] = tokens
            self.groups.setdefault(self._group(tokens), []).append(int(tid))
        for group in self.groups.values():
            group.sort()


@dataclass(slots=True)
class _Rates:
    """One target's per-template counts of the open interval and their EWMA."""

    interval: int
    counts: dict[int, int]
    ewma: dict[int, float]
    active_until: float = -math.inf
    evidence: str = ""


class TemplateDetector(Detector):
    """Novel log templates and template-rate jumps, per target, over one shared template table."""

    kind: ClassVar[str] = "templates"
    params_model: ClassVar[type[BaseModel] | None] = TemplateParams

    wants_all_logs: ClassVar[bool] = True

    def __init__(self, rule: AnyRule) -> None:
        super().__init__(rule)
        spec = getattr(rule, "detector_spec", None)
        assert callable(spec)
        params = spec().parsed_params()
        assert isinstance(params, TemplateParams)
        self.params = params
        self.miner = TemplateMiner(
            similarity=params.similarity,
            max_templates=params.max_templates,
            max_line=params.max_line,
            max_tokens=params.max_tokens,
        )
        self.first_ts: float | None = None
        self.lines = 0
        self._rates: dict[str, _Rates] = {}
        self._targets: dict[str, Target] = {}

    def warmed_up(self, ts: float) -> bool:
        p = self.params
        return self.first_ts is not None and ts - self.first_ts >= p.warmup and self.lines >= p.warmup_lines

    def on_log(self, record: LogRecord) -> list[Observation]:
        p = self.params
        if p.levels is not None and record.level not in p.levels:
            return []
        ts = record.ts
        if self.first_ts is None:
            self.first_ts = ts
        self.lines += 1
        key = record.target.key
        if key not in self._rates and len(self._rates) >= MAX_TARGETS:
            return []
        tid, created = self.miner.add(record.message)
        warm = self.warmed_up(ts)
        self._targets[key] = record.target
        idx = math.floor(ts / p.rate_interval)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._rates[key] = _Rates(idx, {}, {})
        out: list[Observation] = []
        if idx != rates.interval:
            out.extend(self._close(key, rates, idx, ts, warm))
        if p.rate and (tid in rates.counts or len(rates.counts) < p.max_templates):
            rates.counts[tid] = rates.counts.get(tid, 0) + 1
        if created and warm and p.novelty:
            template = self.miner.text(tid)
            out.append(self._fire(key, rates, ts, f"new log template: {template[:300]}"))
        return out

    def _close(self, key: str, rates: _Rates, idx: int, ts: float, warm: bool) -> list[Observation]:
        """Close the interval: compare counts with their EWMA, then decay the EWMA over the gap."""
        p = self.params
        out: list[Observation] = []
        gap = max(idx - rates.interval, 1)
        jumps = []
        for tid in sorted(set(rates.counts) | set(rates.ewma)):
            count = rates.counts.get(tid, 0)
            prev = rates.ewma.get(tid)
            if prev is not None and count >= p.min_count and count > p.rate_ratio * (prev + 1.0):
                jumps.append((tid, count, prev))
            base = prev if prev is not None else 0.0
            value = base + p.alpha * (count - base)
            value *= (1.0 - p.alpha) ** (gap - 1)
            if value < 0.01 and count == 0:
                rates.ewma.pop(tid, None)
            else:
                rates.ewma[tid] = value
        while len(rates.ewma) > p.max_templates:
            del rates.ewma[min(rates.ewma, key=lambda t: rates.ewma[t])]
        rates.counts = {}
        rates.interval = idx
        if jumps and warm and p.rate:
            tid, count, prev = max(jumps, key=lambda j: j[1] / (j[2] + 1.0))
            out.append(
                self._fire(
                    key,
                    rates,
                    ts,
                    f"log template rate jumped to {count}/{p.rate_interval:g}s from ~{prev:.1f}: "
                    f"{self.miner.text(tid)[:300]}",
                )
            )
        return out

    def _fire(self, key: str, rates: _Rates, ts: float, evidence: str) -> Observation:
        rates.active_until = ts + self.params.hold
        rates.evidence = evidence
        return Observation(self._targets[key], True, ts, evidence=evidence)

    def on_tick(self, now: float) -> list[Observation]:
        out: list[Observation] = []
        idx = math.floor(now / self.params.rate_interval)
        warm = self.warmed_up(now)
        for key, rates in list(self._rates.items()):
            if idx > rates.interval:
                out.extend(self._close(key, rates, idx, now, warm))
            if rates.active_until != -math.inf and now >= rates.active_until:
                rates.active_until = -math.inf
                out.append(Observation(self._targets[key], False, now, evidence="quiet"))
            if not rates.ewma and not rates.counts and rates.active_until == -math.inf:
                del self._rates[key]
        return out

    def next_tick_at(self, now: float) -> float:
        """The end of each target's rate interval (closed then) and the end of its hold."""
        due = math.inf
        for rates in self._rates.values():
            due = min(due, (rates.interval + 1) * self.params.rate_interval)
            if rates.active_until != -math.inf:
                due = min(due, rates.active_until)
        return due

    def state(self) -> dict[str, Any]:
        return {
            "miner": self.miner.to_json(),
            "first_ts": self.first_ts,
            "lines": self.lines,
            "rates": {
                k: {
                    "interval": r.interval,
                    "counts": [[t, c] for t, c in r.counts.items()],
                    "ewma": [[t, v] for t, v in r.ewma.items()],
                    "active_until": r.active_until if r.active_until != -math.inf else None,
                    "evidence": r.evidence,
                }
                for k, r in self._rates.items()
            },
        }

    def restore(self, state: dict[str, Any], targets: dict[str, Target]) -> None:
        self.miner.load(state.get("miner", {}))
        first = state.get("first_ts")
        self.first_ts = None if first is None else float(first)
        self.lines = int(state.get("lines", 0))
        for key, r in state.get("rates", {}).items():
            if key not in targets:
                continue
            self._targets[key] = targets[key]
            until = r.get("active_until")
            self._rates[key] = _Rates(
                int(r["interval"]),
                {int(t): int(c) for t, c in r.get("counts", [])},
                {int(t): float(v) for t, v in r.get("ewma", [])},
                -math.inf if until is None else float(until),
                str(r.get("evidence", "")),
            )
