"""The engine: signals in, findings out. One thread, no I/O of its own, time injected.

Every driver (live, replay, tests) calls the same three methods: :meth:`Engine.feed` for each
signal, :meth:`Engine.tick` as time passes, and :meth:`Engine.checkpoint` to persist state. Log
lines are parsed (format detected per container), then matched against the patterns of *all*
rules in one linear-time scan; only the rules whose pattern matched see the line, so the cost per
line does not grow with the number of rules. Detectors report per-target activity, and the rule
state table (pending → firing → resolved, as Prometheus alerting) decides when a finding is born
or resolved.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from operator import attrgetter
from typing import cast

from watcher.clock import Clock
from watcher.detectors.base import Detector, Observation
from watcher.model import (
    MAX_LINE_BYTES,
    Finding,
    Lifecycle,
    LifecycleTag,
    LogRecord,
    Predicts,
    Signal,
    Target,
    finding_to_json,
)
from watcher.parsers import PARSERS, RAW, StickyDetector
from watcher.parsers.base import Parsed
from watcher.parsers.envelope import GUARD_SPEC, WRAPPED_ID, Unwrapped, unwrap
from watcher.rulepack.compile import RuleSet, compile_packs
from watcher.rulepack.schema import AnyRule, MatchRule, RulePack
from watcher.rulepack.state import RuleState, RuleStateTable, Transition
from watcher.store import Store, StoreError


def _line_numbers(block: bytes, starts: Iterable[int]) -> tuple[dict[int, int], int]:
    """The line number of each line-start offset in ``block``, and the block's newline count.

    One pass over the block's bytes, whatever the number of offsets: ``bytes.count`` between
    successive offsets, then to the end. The count is what tells a block whose messages held
    newlines of their own (it has more than one per separator)."""
    numbers: dict[int, int] = {}
    index, position = 0, 0
    for start in sorted(set(starts)):
        index += block.count(b"\n", position, start)
        position = start
        numbers[start] = index
    return numbers, index + block.count(b"\n", position)


_MESSAGE = attrgetter("message")
_TARGET = attrgetter("target")

# rule-pack ``source`` names -> parser kinds that satisfy them
SOURCE_KINDS: dict[str, frozenset[str]] = {
    "tfserving": frozenset({"tfserving"}),
    "nginx": frozenset({"nginx"}),
    "python": frozenset({"gunicorn", "uvicorn", "python"}),
    "docker": frozenset({"docker_events"}),
    "kernel": frozenset({"kernel"}),
    "grpc": frozenset({"grpc"}),
    "json": frozenset({"json"}),
}


@dataclass(frozen=True, slots=True)
class Classification:
    """What the rules make of one log line (``watcher rules explain``)."""

    rules: tuple[str, ...]
    predicts: tuple[Predicts, ...]
    lifecycle: tuple[LifecycleTag, ...]
    record: LogRecord


@dataclass
class EngineStats:
    lines: int = 0
    lifecycle_events: int = 0
    samples: int = 0
    findings: dict[str, int] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        rules: RuleSet | Sequence[RulePack],
        clock: Clock,
        store: Store | None = None,
        upstreams: dict[str, Target] | None = None,
        load_balancers: Iterable[Target] = (),
    ) -> None:
        """Run a compiled :class:`RuleSet`; packs are compiled first, by the same step as lint.

        ``upstreams`` maps ``"127.0.0.1:8501"`` to the replica behind it, and ``load_balancers``
        are the targets whose lines are the load balancer's own (its host log files): only their
        lines are re-attributed to a replica (see :meth:`parse`)."""
        self.ruleset = rules if isinstance(rules, RuleSet) else compile_packs(rules)
        self.clock = clock
        # a load balancer's line about an upstream is evidence about that replica, not about the
        # load balancer
        self.upstreams: dict[str, Target] = dict(upstreams or {})
        self.load_balancers: frozenset[str] = frozenset(t.key for t in load_balancers)
        self.store = store
        self.packs = list(self.ruleset.packs)
        self.rules: Mapping[str, AnyRule] = self.ruleset.rules
        self.pack_of: Mapping[str, str] = self.ruleset.pack_of
        self.detectors: dict[str, Detector] = self.ruleset.new_detectors()
        self.patterns = self.ruleset.patterns
        # a batch's one block scan: the rules' patterns and, with hyperscan, the envelope guard (the
        # lines that may carry a wrapper, see :func:`watcher.parsers.envelope.wrapped_line_starts`)
        # together; elsewhere the guard is no faster than unwrapping every line, which _log_run does.
        # Compiled here, with the rules' own set, not in the first batch's time.
        self._guarded = self.patterns.backend == "hyperscan"
        self._block_patterns = self.patterns.extended([GUARD_SPEC]) if self._guarded else self.patterns
        self.states = RuleStateTable()
        self.targets: dict[str, Target] = {}
        self.stats = EngineStats()
        self._formats: dict[str, StickyDetector] = {}
        self._evidence: dict[tuple[str, str], Observation] = {}
        self._active: dict[tuple[str, str], bool] = {}
        # the (rule, target) pairs firing with their condition holding, as of their last update: a
        # tick's update of them changes nothing (rule state changes only by an update)
        self._steady: set[tuple[str, str]] = set()
        self._target_ids: dict[int, Target] = {}
        self._sample_rules = [d for d in self.detectors.values() if type(d).on_sample is not Detector.on_sample]
        self._event_rules = [d for d in self.detectors.values() if type(d).on_lifecycle is not Detector.on_lifecycle]
        # detectors that learn from every line (log templates): they cost a parse per line
        self._all_lines = [d for d in self.detectors.values() if getattr(d, "wants_all_logs", False)]
        # per rule id, the detector's own :meth:`Detector.next_tick_at` as of its last tick; dropped
        # whenever the detector is fed, so a tick before it (a no-op by that method's contract) is
        # skipped: a hundred idle rules otherwise cost a hundred calls per tick
        self._tick_due: dict[str, float] = {}
        # a lower bound of ``_tick_due``'s values, and the ids dropped from it since the last tick:
        # before that bound only those can be due, so a tick asks them alone (in the detectors'
        # order, as a full pass would), not every rule
        self._tick_earliest = -math.inf
        self._tick_fed: set[str] = set()
        self._tick_order = {rule_id: n for n, rule_id in enumerate(self.detectors)}
        if store is not None:
            self._restore(store)

    # -- input ---------------------------------------------------------------------------
    def feed(self, signal: Signal) -> list[Finding]:
        if isinstance(signal, LogRecord):
            return self._observe(self._on_log(signal))
        if isinstance(signal, Lifecycle):
            self.stats.lifecycle_events += 1
            self.targets[signal.target.key] = signal.target
            self._fed(self._event_rules)
            return self._observe([(d.rule.id, o) for d in self._event_rules for o in d.on_lifecycle(signal)])
        self.stats.samples += 1
        if signal.target is not None:
            self.targets[signal.target.key] = signal.target
        self._fed(self._sample_rules)
        return self._observe([(d.rule.id, o) for d in self._sample_rules for o in d.on_sample(signal)])

    def _fed(self, detectors: Iterable[Detector]) -> None:
        """These detectors are about to take an input: their next tick is due at once."""
        for d in detectors:
            self._tick_due.pop(d.rule.id, None)
            self._tick_fed.add(d.rule.id)

    def feed_all(self, signals: Iterable[Signal]) -> list[Finding]:
        out: list[Finding] = []
        for signal in signals:
            out.extend(self.feed(signal))
        return out

    def feed_batch(self, signals: Sequence[Signal]) -> list[Finding]:
        """Same findings as feeding one by one, faster: runs of log lines are prefiltered with one
        block scan, and only lines some pattern could match are parsed and classified."""
        if all(map(isinstance, signals, repeat(LogRecord))):  # the common batch: log lines only
            return self._log_run(cast("Sequence[LogRecord]", signals)) if signals else []
        out: list[Finding] = []
        run: list[LogRecord] = []
        for signal in signals:
            if isinstance(signal, LogRecord):
                run.append(signal)
                continue
            if run:
                out.extend(self._log_run(run))
                run = []
            out.extend(self.feed(signal))
        if run:
            out.extend(self._log_run(run))
        return out

    def _log_run(self, records: Sequence[LogRecord]) -> list[Finding]:
        """A run of log lines: everything per line here is C-level (``map``, ``join``, the scan) until
        the scan has said which lines matched; only those (and wrapped lines) cost Python work."""
        messages = list(map(_MESSAGE, records))
        if max(map(len, messages)) > MAX_LINE_BYTES:
            messages = [m[:MAX_LINE_BYTES] for m in messages]
        block = "\n".join(messages).encode("utf-8", "replace")
        scan = self._block_patterns
        found = scan.match_block(block)
        numbers, newlines = _line_numbers(block, [start for start, _ in found])
        if newlines != len(messages) - 1:
            # a message with its own newline (UTF-8 writes a newline as the one byte 0x0A, and no
            # other character's encoding holds that byte): neutralise it and scan again (rare)
            block = "\n".join(m.replace("\n", " ") for m in messages).encode("utf-8", "replace")
            found = scan.match_block(block)
            numbers, newlines = _line_numbers(block, [start for start, _ in found])
        matched: dict[int, list[str]] = {}
        # lines in a wrapper (Compose prefix, JSON record, ...) are matched again by their inner text
        flagged: list[int] = []
        for start, ids in found:
            index = numbers[start]
            if WRAPPED_ID in ids:
                flagged.append(index)
                ids = [i for i in ids if i != WRAPPED_ID]
            if ids:
                matched[index] = ids
        candidates = flagged if self._guarded else range(len(records))
        wrapped: dict[int, Unwrapped] = {}
        for index in candidates:
            inner, unwrapped = self._scan_text(records[index])
            if unwrapped is None:
                continue
            wrapped[index] = unwrapped
            ids = self.patterns.match(inner)
            if ids:
                matched[index] = ids
            else:
                matched.pop(index, None)
        out: list[Finding] = []
        if self._all_lines:
            for i, record in enumerate(records):
                hit = matched.get(i)
                out.extend(self._observe(self._on_log(record, hit or [], wrapped.get(i))))
                if not hit:
                    self.stats.lines -= 1  # counted once, below, with the other unmatched lines
        else:  # an unmatched line changes nothing: visit the matched ones only, in order
            for i in sorted(matched):
                out.extend(self._observe(self._on_log(records[i], matched[i], wrapped.get(i))))
        self.stats.lines += len(records) - len(matched)
        # each distinct target object once, by identity: a dataclass hash per line costs more than the
        # scan. ``_target_ids`` holds the objects, so an id in it is never another live object's.
        present = set(map(id, map(_TARGET, records)))
        known = self._target_ids
        if not present <= known.keys():
            if len(known) > 4096:  # sources that build a new Target per line: keep this bounded
                known.clear()
            for target in map(_TARGET, records):
                known.setdefault(id(target), target)
        for target_id in present:
            target = known[target_id]
            self.targets[target.key] = target
        return out

    def evidence(self, rule_id: str, key: str) -> Observation | None:
        """The latest active observation behind a rule on a target (its evidence and ETA): what the
        status page shows for a finding that is firing now, not only what it said when it fired."""
        return self._evidence.get((rule_id, key))

    def tick(self) -> list[Finding]:
        """Let time pass: expire windows, promote pending rules whose ``for`` elapsed, resolve."""
        now = self.clock.now()
        observations: list[tuple[str, Observation]] = []
        due = self._tick_due
        partial = now < self._tick_earliest  # no detector kept in ``due`` is due yet
        ids: Iterable[str] = sorted(self._tick_fed, key=self._tick_order.__getitem__) if partial else self.detectors
        self._tick_fed = set()
        earliest = self._tick_earliest
        for rule_id in ids:
            if now < due.get(rule_id, -math.inf):
                continue  # nothing fed since its last tick, and its own deadline not reached
            d = self.detectors[rule_id]
            observations.extend((rule_id, o) for o in d.on_tick(now))
            due[rule_id] = next_at = d.next_tick_at(now)
            earliest = min(earliest, next_at)
        self._tick_earliest = earliest if partial else min(due.values(), default=math.inf)
        findings = self._observe(observations)
        gc_done = False
        steady = self._steady
        if not self._active.keys() - steady:
            # every pair steady (a fleet's usual tick, one set difference in C): the loop below
            # would skip them all and run the table's clean-up once
            if self._active:
                self.states.collect_garbage(now)
            return findings
        for pair, active in list(self._active.items()):
            if pair in steady:
                # a firing rule whose condition still holds: the update would change nothing (its
                # ``cleared_at`` is already unset, by the observation that made it active), and a
                # fleet holds many such pairs for minutes; skip the call, but not the table's
                # periodic clean-up that every update would have run
                if not gc_done:
                    self.states.collect_garbage(now)
                    gc_done = True
                continue
            rule_id, key = pair
            if not active and self.states.state(rule_id, key) is RuleState.INACTIVE:
                del self._active[pair]
                continue
            gc_done = True  # the update runs it
            findings.extend(self._update(rule_id, key, active, now))
        return findings

    def next_tick_at(self, now: float) -> float:
        """The earliest time a :meth:`tick` could change anything: a pending rule's ``for`` ending,
        a cleared firing rule's ``keep_firing_for`` ending, or a detector's own deadline
        (:meth:`Detector.next_tick_at`). Replay jumps its clock there across quiet stretches; a tick
        before it is a no-op, so the findings are those of ticking every step."""
        due = min((d.next_tick_at(now) for d in self.detectors.values()), default=math.inf)
        for (rule_id, key), active in self._active.items():
            entry = self.states.get(rule_id, key)
            rule = self.rules[rule_id]
            if entry is None or entry.state is RuleState.RESOLVED:
                if active:
                    return now  # a condition that holds with no state yet: the next tick opens it
            elif entry.state is RuleState.PENDING:
                due = min(due, entry.active_at + rule.pending_for if active else now)
            elif not active:  # firing with the condition gone: resolves once keep_firing_for has passed
                if entry.cleared_at is None:
                    return now
                due = min(due, entry.cleared_at + rule.keep_firing_for)
        return due

    # -- logs ------------------------------------------------------------------------------
    def _scan_text(self, record: LogRecord) -> tuple[str, Unwrapped | None]:
        """The text the patterns see: the line without its wrappers (:mod:`watcher.parsers.envelope`).

        A load balancer's own lines are not unwrapped: its log format is configured and its
        parser's positions are what attribution trusts; a wrapper's text (a JSON member) could
        be a client's. A record whose source already parsed it is taken as it is."""
        raw = record.message if len(record.message) <= MAX_LINE_BYTES else record.message[:MAX_LINE_BYTES]
        if record.source or record.target.key in self.load_balancers:
            return raw, None
        wrapped = unwrap(raw)
        return (raw, None) if wrapped is None else (wrapped.text, wrapped)

    def parse(self, record: LogRecord) -> LogRecord:
        """Fill level/source/fields from the raw line unless a source already did."""
        if record.source:
            return record
        return self._parse(record, self._scan_text(record)[1])

    def _parse(self, record: LogRecord, wrapped: Unwrapped | None) -> LogRecord:
        """Parse the text inside the wrappers; a JSON wrapper's level and members fill what the
        inner text does not say (a plain message in a JSON record stays a ``json`` line)."""
        if record.source:
            return record
        if wrapped is not None:
            message = wrapped.text
        elif len(record.message) <= MAX_LINE_BYTES:
            message = record.message
        else:
            message = record.message[:MAX_LINE_BYTES]
        sticky = self._formats.get(record.target.key)
        if sticky is None:
            sticky = self._formats[record.target.key] = StickyDetector()
        parsed = sticky.parse(message)
        kind, level = parsed.kind, parsed.level
        fields = dict(record.fields)
        if wrapped is not None and "json" in wrapped.shapes:
            fields.update(wrapped.fields)
            level = level or wrapped.level
            if kind == RAW:
                kind = "json"
        fields.update(parsed.fields)
        target = record.target
        replica = self._attribute(fields.get("upstream_addr", "")) if target.key in self.load_balancers else None
        if replica is not None and replica != target:
            fields["reported_by"] = target.key
            target = replica
        return replace(
            record,
            target=target,
            message=parsed.message,
            level=level or record.level,
            source=kind,
            fields=fields,
        )

    def _attribute(self, upstream_addr: str) -> Target | None:
        """The replica that finally answered: Nginx lists every upstream it tried, last one last.

        Called only for the load balancer's own lines, whose ``upstream_addr`` its parser took
        from the position nginx writes it in (never from client text such as a Referer), and it
        names only a replica in the upstream map. Any other container's line stays that
        container's whatever fields it carries: a replica printing ``{"upstream_addr": "<B>"}``
        speaks about itself, never about B."""
        if not upstream_addr or not self.upstreams:
            return None
        last = upstream_addr.rsplit(",", 1)[-1].strip()
        return self.upstreams.get(last)

    def classify(self, record: LogRecord) -> Classification:
        """Which rules a line matches, honouring each rule's source and level filters.

        Patterns match the line as the server wrote it (what ``grep`` would see), inside any
        wrapper it arrived in (Compose prefix, kubectl timestamp, JSON record: see
        :mod:`watcher.parsers.envelope`); the parser is consulted only for lines some pattern
        matched, for the rules' source and level filters and for attribution. That keeps the
        99 % of ordinary lines at scan cost.
        """
        text, wrapped = self._scan_text(record)
        return self._classify(record, self.patterns.match(text), wrapped)

    def _classify(self, record: LogRecord, matched: list[str], wrapped: Unwrapped | None) -> Classification:
        if not matched:
            return Classification((), (), (), record)
        reporter = record.target
        text = wrapped.text if wrapped is not None else record.message[:MAX_LINE_BYTES]
        record = self._parse(record, wrapped)
        if record.target is not reporter and record.target != reporter:  # ``is``: the usual case, no dataclass __eq__
            matched = self._nginx_written(record, matched)
        ids: list[str] = []
        for rule_id in matched:
            rule = self.rules[rule_id]
            assert isinstance(rule, MatchRule)
            wanted = rule.match.source
            level = record.level
            if wanted != "any" and record.source not in (kinds := SOURCE_KINDS.get(wanted, frozenset({wanted}))):
                if reporter.key in self.load_balancers:
                    continue  # a load balancer's line counts only as its own parser read it (issue #14)
                parsed = self._parse_as(kinds, text)
                if parsed is None:
                    continue
                level = parsed.level or (wrapped.level if wrapped is not None else "") or record.level
            if rule.match.level is not None and level not in rule.match.level:
                continue
            if rule.match.whole_line and not _is_whole_line(text, rule.match.log, rule.match.ignore_case):
                continue
            ids.append(rule_id)
        predicts = tuple(dict.fromkeys(p for i in ids if (p := self.rules[i].predicts) is not None))
        lifecycle = tuple(dict.fromkeys(t for i in ids if (t := self.rules[i].lifecycle) is not None))
        return Classification(tuple(ids), predicts, lifecycle, record)

    @staticmethod
    def _parse_as(kinds: frozenset[str], text: str) -> Parsed | None:
        """``text`` read by the parser of one of ``kinds``, whatever the container's detected format.

        Why: format detection is a guess per container (sticky, so a mixed log keeps one guess),
        and a rule's ``source`` asks what the line *is*: a TF Serving line in a container
        detected as something else is still a TF Serving line. Asked only for lines a pattern
        already matched, so ordinary lines never pay for it."""
        for kind in sorted(kinds):
            parser = PARSERS.get(kind)
            parsed = parser(text) if parser is not None else None
            if parsed is not None:
                return parsed
        return None

    def _nginx_written(self, record: LogRecord, matched: list[str]) -> list[str]:
        """The rules a load balancer's line about a replica may fire: a client writes part of
        that line (Referer, User-Agent, Host), so the pattern must match the text the LB's parser
        says the LB wrote (the error message before nginx's context; the access line without
        the client's headers), and rules for a replica's own output (``source: any``) are not
        asked: one request with a crafted Referer must not read as the replica's own crash."""
        trusted = set(self.patterns.match(record.message[:MAX_LINE_BYTES]))
        out = []
        for rule_id in matched:
            rule = self.rules[rule_id]
            if rule_id in trusted and isinstance(rule, MatchRule) and rule.match.source != "any":
                out.append(rule_id)
        return out

    def _on_log(
        self, record: LogRecord, matched: list[str] | None = None, wrapped: Unwrapped | None = None
    ) -> list[tuple[str, Observation]]:
        """One line: ``matched`` and ``wrapped`` are what a block scan already found (else scanned here)."""
        self.stats.lines += 1
        self.targets[record.target.key] = record.target
        if matched is None:
            text, wrapped = self._scan_text(record)
            matched = self.patterns.match(text)
        c = self._classify(record, matched, wrapped)
        out: list[tuple[str, Observation]] = []
        for rule_id in c.rules:
            if self.rules[rule_id].predicts is None:
                continue  # lifecycle tags classify; they predict nothing
            self._tick_due.pop(rule_id, None)
            self._tick_fed.add(rule_id)
            out.extend((rule_id, o) for o in self.detectors[rule_id].on_log(c.record))
        if self._all_lines:
            parsed = c.record if c.record.source else self._parse(record, wrapped)
            self._fed(self._all_lines)
            for d in self._all_lines:
                out.extend((d.rule.id, o) for o in d.on_log(parsed))
        return out

    # -- state -----------------------------------------------------------------------------
    def _observe(self, observations: list[tuple[str, Observation]]) -> list[Finding]:
        findings: list[Finding] = []
        now = self.clock.now()
        for rule_id, obs in observations:
            key = obs.target.key
            self.targets[key] = obs.target
            if obs.active:
                self._evidence[(rule_id, key)] = obs
            self._active[(rule_id, key)] = obs.active
            findings.extend(self._update(rule_id, key, obs.active, now))
        return findings

    def _update(self, rule_id: str, key: str, active: bool, now: float) -> list[Finding]:
        rule = self.rules[rule_id]
        transition = self.states.update(
            rule_id, key, active, now, for_s=rule.pending_for, keep_firing_for_s=rule.keep_firing_for
        )
        if active and self.states.state(rule_id, key) is RuleState.FIRING:
            self._steady.add((rule_id, key))
        else:
            self._steady.discard((rule_id, key))
        if transition is None or transition.to_state not in (RuleState.FIRING, RuleState.RESOLVED):
            return []
        return [self._finding(rule, key, transition)]

    def _finding(self, rule: AnyRule, key: str, transition: Transition) -> Finding:
        assert rule.predicts is not None
        resolved = transition.to_state is RuleState.RESOLVED
        obs = self._evidence.get((rule.id, key))
        finding = Finding(
            target=self.targets[key],
            rule_id=rule.id,
            predicts=rule.predicts,
            ts=transition.since,
            severity=rule.severity,
            score=obs.score if obs else 1.0,
            eta_s=obs.eta_s if obs else None,
            evidence=(obs.evidence,) if obs and obs.evidence else (),
            pack=self.pack_of[rule.id],
            resolved=resolved,
        )
        label = f"{finding.predicts.value}{':resolved' if resolved else ''}"
        self.stats.findings[label] = self.stats.findings.get(label, 0) + 1
        if self.store is not None:
            # the findings log is history, not state: a full disk loses the row (counted by the store),
            # never the finding
            with contextlib.suppress(StoreError):
                self.store.record_finding(
                    finding.ts, key, rule.id, finding.predicts.value, resolved, finding_to_json(finding)
                )
        return finding

    # -- persistence -----------------------------------------------------------------------
    def checkpoint(self) -> None:
        if self.store is None:
            return
        now = self.clock.now()
        self.store.put_state("engine", "rule_states", self.states.to_json(), now)
        self.store.put_state(
            "engine", "targets", {k: [t.container, t.engine, t.service] for k, t in self.targets.items()}, now
        )
        self.store.put_state(
            "engine",
            "active",
            [[r, k, a] for (r, k), a in self._active.items()],
            now,
        )
        for rule_id, detector in self.detectors.items():
            self.store.put_state("detector", rule_id, detector.state(), now)

    def _restore(self, store: Store) -> None:
        targets = store.get_state("engine", "targets") or {}
        self.targets = {k: Target(container=v[0], engine=v[1], service=v[2]) for k, v in targets.items()}
        states = store.get_state("engine", "rule_states")
        if states is not None:
            self.states = RuleStateTable.from_json(states)
        for rule_id, key, active in store.get_state("engine", "active") or []:
            if rule_id in self.rules and key in self.targets:
                self._active[(rule_id, key)] = bool(active)
        for rule_id, state in store.state_items("detector").items():
            if rule_id in self.detectors and isinstance(state, dict):
                self.detectors[rule_id].restore(state, self.targets)


def _is_whole_line(text: str, literal: str, ignore_case: bool) -> bool:
    """``whole_line`` rules: the literal is the entire message, not a word inside a longer one."""
    line = text.strip()
    return line.casefold() == literal.casefold() if ignore_case else line == literal
