"""All log patterns of all rule packs, matched in one scan per line.

Why one scan: a watcher tails every replica's logs, and the packs will grow. Looping over rules and
calling ``re.search`` for each makes the cost per line grow with the number of rules, and Python's
backtracking engine can be driven into exponential time by one careless pattern and one hostile
line. So every pattern is compiled into a single automaton and scanned once per line:

* ``hyperscan`` (Intel's multi-pattern DFA/NFA engine) when its wheel imports: linear time and
  independent of the rule count;
* else ``re2`` (google-re2's ``RE2::Set``): linear time, one pass for the whole set;
* else ``python``: an Aho-Corasick prefilter (``pyahocorasick`` if installed, otherwise C-speed
  ``bytes.__contains__`` per literal) over literals every match must contain, then confirmation
  of the few candidate patterns with ``re`` on input capped at :data:`MAX_LINE` bytes. It always
  works, so the project never breaks when a wheel is missing.

Semantics are the same on every backend, and deliberately byte-oriented: text is matched as UTF-8
bytes, ``\\d``/``\\w``/``\\s`` and case-insensitivity are ASCII-only, ``.`` is one byte and never a
newline. That is what hyperscan and RE2 (Latin-1 mode) do natively, and what ``re`` does on bytes.

Patterns are vetted before any backend sees them (:func:`check_pattern`), so a rule pack valid on
one machine is valid on all: no backreferences, lookaround or conditionals (the linear engines
cannot run them), no pattern that matches the empty line, no nested quantifier where one level
is unbounded (``(a+)+``, ``(a|aa)*b``: exponential), and no two unbounded quantifiers in a row
over overlapping characters (``\\d+\\d+``, ``\\s*.*``: polynomial, ``\\d+\\d+x`` takes ``re`` 12 s on
3000 digits): such patterns are harmless to hyperscan but catastrophic to the fallback, and a pack
must not depend on which wheel is installed. (Left allowed: unbounded quantifiers separated by a
character the first one could also match, the ``error.*timeout.*upstream`` idiom; quadratic per
start at worst, bounded by the line cap.)
"""

from __future__ import annotations

import contextlib
import importlib
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from watcher.model import MAX_LINE_BYTES as MAX_LINE  # matched bytes of a line; the one cap, see model

_sre_parse: Any = importlib.import_module("re._parser")
_sre_c: Any = importlib.import_module("re._constants")

BACKENDS: Final = ("hyperscan", "re2", "python")


class PatternError(ValueError):
    """A pattern the set refuses, with the rule's id so a pack linter can point at it."""

    def __init__(self, pattern_id: str, reason: str) -> None:
        super().__init__(f"pattern {pattern_id!r}: {reason}")
        self.pattern_id = pattern_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PatternSpec:
    """One entry: a literal substring or a regular expression, optionally case-insensitive."""

    pattern_id: str
    pattern: str
    is_regex: bool = False
    ignore_case: bool = False

    @property
    def source(self) -> str:
        """The pattern as a regular expression (literals escaped)."""
        return self.pattern if self.is_regex else re.escape(self.pattern)


@dataclass(frozen=True, slots=True)
class PatternInfo:
    """What :func:`check_pattern` learned: the compiled fallback regex and a required literal."""

    spec: PatternSpec
    regex: re.Pattern[bytes]
    required: bytes | None  # a substring every match contains (lower-cased if ignore_case)
    string_anchors: bool  # uses \\A or \\Z, which differ between per-line and per-block scans
    end_anchored: bool = False  # uses $ or \\Z: hyperscan cannot be trusted with these (see _HyperscanEngine)


SpecLike = PatternSpec | tuple[str, str, bool, bool]


def _as_spec(entry: SpecLike) -> PatternSpec:
    if isinstance(entry, PatternSpec):
        return entry
    pattern_id, pattern, is_regex, ignore_case = entry
    return PatternSpec(pattern_id, pattern, is_regex, ignore_case)


# --------------------------------------------------------------------------- vetting

MAX_PATTERN_BYTES: Final = 1024
"""Bytes of a pattern as written in the pack (a literal or a regex)."""

MAX_REPEAT_COUNT: Final = 1000
"""RE2's own limit on ``{n,m}``: a pack valid here must be valid for every backend."""

MAX_NESTED_PATHS: Final = 1000
"""Bound on the ways a nested bounded repetition can split its input, ``(\\d{1,3}\\.){3}`` is 27.

``(a{2}){3}`` is one way (safe, it is ``a{6}``); ``(a{1,30}){1,30}`` is 30**30 and takes Python's
``re`` minutes on 200 bytes. The fallback backtracks, so the bound is what keeps it linear-ish."""


def _first_literal(alt: Any) -> int | None:
    """The byte every match of one alternative starts with, case-folded, or None if there is none."""
    if not alt:
        return None
    op, av = alt[0]
    if op is _sre_c.LITERAL:
        return int(av) | 0x20 if chr(av).isalpha() and av < 128 else int(av)
    if op is _sre_c.SUBPATTERN:
        return _first_literal(av[-1])
    return None


def _ambiguous_branch(seq: Any) -> bool:
    """An alternation a repeat could enter more than one way at one position (``(a|aa)``), the
    shape that backtracks exponentially; ``(foo|bar)`` starts each branch differently and is fine."""
    for op, av in seq:
        if op is _sre_c.BRANCH:
            firsts = [_first_literal(alt) for alt in av[1]]
            if None in firsts or len(set(firsts)) != len(firsts):
                return True
            if any(_ambiguous_branch(alt) for alt in av[1]):
                return True
        if op is _sre_c.SUBPATTERN and _ambiguous_branch(av[-1]):
            return True
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT) and _ambiguous_branch(av[2]):
            return True
    return False


def _paths(seq: Any) -> int:
    """Upper bound on the choices the looping repeats inside ``seq`` leave a backtracker."""
    total = 1
    for op, av in seq:
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
            lo, hi, sub = av
            if hi > 1:
                total *= (hi - lo + 1) * _paths(sub) ** hi
        elif op is _sre_c.SUBPATTERN:
            total *= _paths(av[-1])
        elif op is _sre_c.BRANCH:
            total *= max(_paths(alt) for alt in av[1])
        if total > MAX_NESTED_PATHS:
            return MAX_NESTED_PATHS + 1  # enough to refuse; keeps the arithmetic small
    return total


_UNSUPPORTED: Final = {
    "GROUPREF": "regex uses a backreference, which RE2 does not support (it needs backtracking)",
    "GROUPREF_EXISTS": "regex uses a conditional group (?(...)), which RE2 does not support (it needs backtracking)",
    "ASSERT": "regex uses a lookahead or lookbehind assertion, which RE2 does not support",
    "ASSERT_NOT": "regex uses a lookahead or lookbehind assertion, which RE2 does not support",
    "ATOMIC_GROUP": "regex uses an atomic group or possessive quantifier, which RE2 does not support",
    "POSSESSIVE_REPEAT": "regex uses an atomic group or possessive quantifier, which RE2 does not support",
}
_NESTED: Final = (
    "regex nests a quantifier inside a repeated group, which can backtrack catastrophically "
    "(e.g. (a+)+$); rewrite it without nested repetition"
)


_ALL_BYTES: Final = frozenset(range(256))
_CATEGORIES: Final = {
    "CATEGORY_DIGIT": frozenset(b"0123456789"),
    "CATEGORY_SPACE": frozenset(b" \t\n\r\f\v"),
    "CATEGORY_WORD": frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"),
}
_ADJACENT: Final = (
    "regex puts two unbounded quantifiers in a row over the same characters (e.g. \\d+\\d+ or \\s*.*), "
    "which backtracks polynomially on a long line; merge them into one"
)


def _fold(chars: frozenset[int], ignore_case: bool) -> frozenset[int]:
    if not ignore_case:
        return chars
    return chars | {c ^ 0x20 for c in chars if 65 <= (c & ~0x20) <= 90}


def _charset(item: Any, ignore_case: bool) -> frozenset[int] | None:
    """The bytes one single-character element can match; None for anything longer (a group, a branch)."""
    op, av = item
    if op is _sre_c.LITERAL:
        return _fold(frozenset({int(av)}), ignore_case)
    if op is _sre_c.NOT_LITERAL:
        return _ALL_BYTES - _fold(frozenset({int(av)}), ignore_case)
    if op is _sre_c.ANY:
        return _ALL_BYTES - {10}
    if op is _sre_c.IN:
        chars: set[int] = set()
        negate = False
        for sub_op, sub_av in av:
            if sub_op is _sre_c.NEGATE:
                negate = True
            elif sub_op is _sre_c.LITERAL:
                chars.add(int(sub_av))
            elif sub_op is _sre_c.RANGE:
                chars.update(range(int(sub_av[0]), int(sub_av[1]) + 1))
            elif sub_op is _sre_c.CATEGORY:
                name = str(sub_av)
                base = _CATEGORIES.get(name.replace("_NOT_", "_"))
                if base is None:
                    return None
                chars.update(_ALL_BYTES - base if "_NOT_" in name else base)
            else:
                return None
        folded = _fold(frozenset(chars), ignore_case)
        return _ALL_BYTES - folded if negate else folded
    return None


def _adjacent_repeats(pattern_id: str, seq: Any, ignore_case: bool, run: frozenset[int] | None = None) -> Any:
    """Refuse two unbounded single-character repeats that can consume the same bytes with only optional
    elements (or groups of them) between them. ``run`` is what the repeats since the last mandatory
    element can consume; returned so a group continues its surroundings' run."""
    for op, av in seq:
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
            lo, hi, sub = av
            chars = _charset(sub[0], ignore_case) if len(sub) == 1 else None
            if chars is None:
                _adjacent_repeats(pattern_id, sub, ignore_case)
                run = run if lo == 0 else None
                continue
            if hi == _sre_c.MAXREPEAT:
                if run is not None and run & chars:
                    raise PatternError(pattern_id, _ADJACENT)
                run = (run | chars) if (lo == 0 and run is not None) else chars
            elif lo > 0:
                run = None  # a mandatory character ends the run
        elif op is _sre_c.SUBPATTERN:
            run = _adjacent_repeats(pattern_id, av[-1], ignore_case, run)
        elif op is _sre_c.AT:
            continue  # zero-width
        elif op is _sre_c.BRANCH:
            for alt in av[1]:
                _adjacent_repeats(pattern_id, alt, ignore_case)
            run = None
        else:
            run = None
    return run


def _walk(pattern_id: str, seq: Any, outer: str | None, anchors: set[str]) -> None:
    """Reject constructs that are unsupported by the linear engines or that backtrack badly."""
    for op, av in seq:
        reason = _UNSUPPORTED.get(str(op))
        if reason is not None:
            raise PatternError(pattern_id, reason)
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
            lo, hi, sub = av
            for count in (lo, hi):
                if count != _sre_c.MAXREPEAT and count > MAX_REPEAT_COUNT:
                    raise PatternError(
                        pattern_id, f"regex repeat count {count} exceeds RE2's limit of {MAX_REPEAT_COUNT}"
                    )
            loops = hi > 1
            kind = "unbounded" if hi == _sre_c.MAXREPEAT else "bounded"
            if loops and outer is not None and "unbounded" in (outer, kind):
                raise PatternError(pattern_id, _NESTED)
            if loops and kind == "unbounded" and _ambiguous_branch(sub):
                raise PatternError(
                    pattern_id,
                    "regex repeats an alternation without bound (e.g. (a|aa)*), which can backtrack "
                    "catastrophically; rewrite it with a character class or a bounded count",
                )
            if loops and kind == "bounded" and _paths(sub) > 1 and _paths([(op, av)]) > MAX_NESTED_PATHS:
                raise PatternError(
                    pattern_id,
                    f"regex nests bounded quantifiers with more than {MAX_NESTED_PATHS} ways to split a line "
                    "(e.g. (a{1,30}){1,30}), which can backtrack catastrophically; rewrite it with fewer choices",
                )
            _walk(pattern_id, sub, kind if loops else outer, anchors)
        elif op is _sre_c.BRANCH:
            for alt in av[1]:
                _walk(pattern_id, alt, outer, anchors)
        elif op is _sre_c.SUBPATTERN:
            _walk(pattern_id, av[-1], outer, anchors)
        elif op is _sre_c.AT:
            anchors.add(str(av))


def _required_literal(seq: Any, ignore_case: bool) -> bytes | None:
    """Longest run of plain literal bytes at the top level: every match must contain it."""
    best = b""
    run = bytearray()
    for op, av in seq:
        if op is _sre_c.LITERAL and av < 256:
            run.append(av)
            continue
        if len(run) > len(best):
            best = bytes(run)
        run.clear()
    if len(run) > len(best):
        best = bytes(run)
    if len(best) < 2:
        return None
    return best.lower() if ignore_case else best


def check_pattern(entry: SpecLike) -> PatternInfo:
    """Vet one pattern; raise :class:`PatternError` with the reason if the set must refuse it.

    The one definition of a valid log pattern: the rule-pack schema calls it too, so whatever
    lints clean compiles on every backend and whatever the set refuses is a lint error.
    """
    spec = _as_spec(entry)
    if not spec.pattern:
        raise PatternError(spec.pattern_id, "empty pattern")
    size = len(spec.pattern.encode("utf-8"))
    if size > MAX_PATTERN_BYTES:
        what = "regex" if spec.is_regex else "pattern"
        raise PatternError(spec.pattern_id, f"{what} is {size} bytes long; the limit is {MAX_PATTERN_BYTES}")
    raw = spec.source.encode("utf-8")
    flags = re.IGNORECASE if spec.ignore_case else 0
    try:
        parsed = _sre_parse.parse(raw, flags)
        regex = re.compile(raw, flags)
    except re.error as exc:
        at = f" at position {exc.pos}" if exc.pos is not None else ""
        raise PatternError(spec.pattern_id, f"invalid regex: {exc.msg}{at}") from None
    except (OverflowError, RecursionError) as exc:
        raise PatternError(spec.pattern_id, f"invalid regex: {exc}") from None
    anchors: set[str] = set()
    _walk(spec.pattern_id, parsed, None, anchors)
    _adjacent_repeats(spec.pattern_id, parsed, spec.ignore_case or bool(parsed.state.flags & re.IGNORECASE))
    if regex.search(b"") is not None:
        raise PatternError(spec.pattern_id, "regex matches the empty line, so it would match every line")
    return PatternInfo(
        spec,
        regex,
        _required_literal(parsed, spec.ignore_case),
        string_anchors=bool(anchors & {"AT_BEGINNING_STRING", "AT_END_STRING"}),
        end_anchored=bool(anchors & {"AT_END", "AT_END_STRING"}),
    )


# --------------------------------------------------------------------------- engines


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _collect(pattern_index: int, _from: int, _to: int, _flags: int, hits: list[int]) -> None:
    hits.append(pattern_index)


def _collect_end(_index: int, _from: int, to: int, _flags: int, ends: list[int]) -> None:
    ends.append(to)


class _Engine:
    name = ""

    def __init__(self, infos: Sequence[PatternInfo]) -> None:
        """Compile ``infos``; raise if this engine cannot (the set then tries the next one)."""

    def match(self, data: bytes) -> list[int]:
        raise NotImplementedError

    def candidate_ends(self, block: bytes) -> list[int] | None:
        """End offsets of possible matches in a multi-line block, or None if not supported."""
        return None


class _HyperscanEngine(_Engine):
    """One hyperscan database for the set, except end-anchored patterns, which ``re`` confirms.

    Why the exception: the hyperscan library in the ``hyperscan`` wheel misses matches of patterns
    that end in ``$`` (or ``\\Z``) after an optional or repeated piece: ``ba?$`` does not match
    ``"x" * 15 + "ba"`` (buffers of 17 to 34 bytes; any length with HS_FLAG_MULTILINE), nor ``ba*$``
    past 16 bytes. Without an end anchor no difference from ``re`` is known (the property test
    checks that). So end-anchored patterns go to the literal prefilter + ``re`` path of the python
    engine; shipped packs have none, and their cost per line stays that of one prefilter.
    """

    name = "hyperscan"

    def __init__(self, infos: Sequence[PatternInfo]) -> None:
        hs = importlib.import_module("hyperscan")
        keep: list[int] = []
        self._anchored = [n for n, info in enumerate(infos) if info.end_anchored]
        self._confirm = _PythonEngine([infos[n] for n in self._anchored])
        self._confirm_literals = [
            (infos[n].required, infos[n].spec.ignore_case) for n in self._anchored if infos[n].required is not None
        ]
        self._confirm_all_lines = any(infos[n].required is None for n in self._anchored)

        def line_db(keep: Sequence[int]) -> Any:
            db = hs.Database(mode=hs.HS_MODE_BLOCK)
            db.compile(
                expressions=[infos[n].spec.source.encode("utf-8") for n in keep],
                ids=list(keep),
                elements=len(keep),
                flags=[caseless(n) | hs.HS_FLAG_SINGLEMATCH for n in keep],
            )
            return db

        def caseless(n: int) -> int:
            return int(hs.HS_FLAG_CASELESS) if infos[n].spec.ignore_case else 0

        unanchored = [n for n, info in enumerate(infos) if not info.end_anchored]
        compiled: Any = None
        if unanchored:
            # the usual case, hyperscan takes every pattern at once: one compile, not one per pattern
            with contextlib.suppress(hs.error):
                compiled = line_db(unanchored)
                keep = unanchored
        if compiled is None:  # find the patterns it refuses, one by one
            for n in unanchored:
                info = infos[n]
                probe = hs.Database(mode=hs.HS_MODE_BLOCK)
                try:
                    probe.compile(expressions=[info.spec.source.encode("utf-8")], ids=[n], elements=1, flags=[0])
                except hs.error as exc:
                    if "never match" in str(exc):
                        continue  # e.g. a\bb: it matches nothing on every backend, so leave it out
                    raise PatternError(info.spec.pattern_id, f"rejected by hyperscan: {exc}") from None
                keep.append(n)
        self._empty = not keep
        self._block_db: Any = None
        self._lock = threading.Lock()  # the wrapper's scratch space is per database
        if self._empty:
            return
        exprs = [infos[n].spec.source.encode("utf-8") for n in keep]
        self._line_db: Any = compiled if compiled is not None else line_db(keep)
        self._first_line = False
        if not any(i.string_anchors for i in infos):
            # A prefilter only (every candidate line is re-checked by match()), so a leading ^ is
            # not trusted to the scan: with HS_FLAG_MULTILINE the wheel's hyperscan misses ^ followed
            # by an optional piece past the first line (``^ ?c`` in ``"11111111\n1111111\nc"``; the
            # property test found it), and ``(?:^|\n) ?c`` fails the same way. The ^ becomes the
            # newline before the line (a plain byte, found by the scan as any literal) and the
            # block's first line, which has none, is always a candidate (see candidate_ends). The
            # candidates stay a superset; dropping the ^ instead made every position a possible
            # start, which for the envelope guard's ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127} {1,64}\|``
            # cost three times the rules' scan.
            block_exprs = [b"\\n" + e[1:] if e.startswith(b"^") and len(e) > 1 else e for e in exprs]
            self._first_line = block_exprs != exprs
            self._block_db = hs.Database(mode=hs.HS_MODE_BLOCK)
            self._block_db.compile(
                expressions=block_exprs,
                ids=keep,
                elements=len(exprs),
                flags=[caseless(n) | hs.HS_FLAG_MULTILINE for n in keep],
            )

    def match(self, data: bytes) -> list[int]:
        hits: list[int] = []
        if not self._empty:
            with self._lock:
                self._line_db.scan(data, match_event_handler=_collect, context=hits)
        if self._anchored:
            hits.extend(self._anchored[n] for n in self._confirm.match(data))
        if len(hits) > 1:
            hits.sort()
        return hits

    def candidate_ends(self, block: bytes) -> list[int] | None:
        if self._confirm_all_lines or (self._block_db is None and not self._empty):
            return None
        ends: list[int] = []
        if not self._empty:
            with self._lock:
                self._block_db.scan(block, match_event_handler=_collect_end, context=ends)
            if self._first_line and block:
                ends.append(0)  # the first line: a ^ pattern's newline-prefixed form cannot match it
        if self._confirm_literals:
            lower = block.lower() if any(ic for _lit, ic in self._confirm_literals) else block
            for literal, ignore_case in self._confirm_literals:
                assert literal is not None
                ends.extend(_literal_ends(lower if ignore_case else block, literal))
        return ends


def _literal_ends(block: bytes, literal: bytes) -> list[int]:
    """End offsets of every occurrence of ``literal``: the lines a pattern requiring it could match."""
    ends: list[int] = []
    at = block.find(literal)
    while at >= 0:
        ends.append(at + len(literal))
        at = block.find(literal, at + 1)
    return ends


class _Re2Engine(_Engine):
    name = "re2"

    def __init__(self, infos: Sequence[PatternInfo]) -> None:
        re2 = importlib.import_module("re2")
        options = re2.Options()
        options.encoding = re2.Options.Encoding.LATIN1  # byte semantics, like the other engines
        options.never_nl = False
        self._set: Any = re2.Set.SearchSet(options)
        for info in infos:
            prefix = b"(?i)" if info.spec.ignore_case else b""
            index = self._set.Add(prefix + info.spec.source.encode("utf-8"))
            if index < 0:
                raise PatternError(info.spec.pattern_id, "rejected by RE2")
        self._set.Compile()

    def match(self, data: bytes) -> list[int]:
        hits: list[int] = self._set.Match(data) or []
        if len(hits) > 1:
            hits.sort()
        return hits


class _PythonEngine(_Engine):
    """Literal prefilter, then ``re`` on the candidates only (patterns are vetted, input capped)."""

    name = "python"

    def __init__(self, infos: Sequence[PatternInfo]) -> None:
        self._infos = list(infos)
        self._always = [n for n, i in enumerate(infos) if i.required is None]
        self._literals = [(n, i.required) for n, i in enumerate(infos) if i.required is not None]
        self._need_lower = any(i.spec.ignore_case for i in infos)
        ahocorasick = _optional("ahocorasick")
        self._automaton: Any = None
        if ahocorasick is not None and self._literals:
            automaton = ahocorasick.Automaton()
            by_literal: dict[bytes, list[int]] = {}
            for n, lit in self._literals:
                by_literal.setdefault(lit.lower(), []).append(n)
            for lit, indexes in by_literal.items():
                automaton.add_word(lit.decode("latin-1"), indexes)
            automaton.make_automaton()
            self._automaton = automaton
        # confirmation: plain literals need no regex
        self._plain: dict[int, tuple[bytes, bool]] = {
            n: (i.spec.pattern.encode("utf-8"), i.spec.ignore_case) for n, i in enumerate(infos) if not i.spec.is_regex
        }

    def match(self, data: bytes) -> list[int]:
        lower = data.lower() if (self._need_lower or self._automaton is not None) else data
        candidates: set[int] = set(self._always)
        if self._automaton is not None:
            for _end, indexes in self._automaton.iter(lower.decode("latin-1")):
                candidates.update(indexes)
        else:
            for n, lit in self._literals:
                if lit in (lower if self._infos[n].spec.ignore_case else data):
                    candidates.add(n)
        hits: list[int] = []
        for n in sorted(candidates):
            plain = self._plain.get(n)
            if plain is not None:
                text, ignore_case = plain
                if (text.lower() in lower) if ignore_case else (text in data):
                    hits.append(n)
            elif self._infos[n].regex.search(data) is not None:
                hits.append(n)
        return hits


_ENGINES: dict[str, type[_Engine]] = {
    "hyperscan": _HyperscanEngine,
    "re2": _Re2Engine,
    "python": _PythonEngine,
}


def available_backends() -> list[str]:
    """Backends whose libraries import on this machine, best first."""
    found = [name for name, module in (("hyperscan", "hyperscan"), ("re2", "re2")) if _optional(module)]
    return [*found, "python"]


# --------------------------------------------------------------------------- the set


class PatternSet:
    """Many patterns compiled into one scanner; ``match`` returns every matching id, sorted.

    ``backend="auto"`` takes the best engine that imports *and* compiles the set, so a wheel
    that is missing or refuses a pattern degrades speed, never correctness. Not thread-safe for
    concurrent ``match`` calls on hyperscan beyond an internal lock: give each thread its own set
    if contention matters.
    """

    def __init__(self, entries: Iterable[SpecLike], backend: str = "auto", max_line: int = MAX_LINE) -> None:
        infos: list[PatternInfo] = []
        seen: set[str] = set()
        for entry in entries:
            info = check_pattern(entry)
            if info.spec.pattern_id in seen:
                raise PatternError(info.spec.pattern_id, "duplicate id")
            seen.add(info.spec.pattern_id)
            infos.append(info)
        infos.sort(key=lambda i: i.spec.pattern_id)
        self._infos = infos
        self._ids = [i.spec.pattern_id for i in infos]
        self.max_line = max_line
        if backend != "auto" and backend not in _ENGINES:
            raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS} or 'auto'")
        order = available_backends() if backend == "auto" else [backend]
        engine: _Engine | None = None
        errors: list[str] = []
        for name in order:
            if not infos:
                engine = _PythonEngine(infos)
                break
            try:
                engine = _ENGINES[name](infos)
                break
            except Exception as exc:  # a missing wheel or an engine-specific refusal
                if backend != "auto":
                    raise
                errors.append(f"{name}: {exc}")
        assert engine is not None, errors  # the python engine accepts every vetted pattern
        self._engine = engine
        self.backend: str = engine.name
        self.fallback_reasons: tuple[str, ...] = tuple(errors)
        self._extended: dict[tuple[PatternSpec, ...], PatternSet] = {}

    def extended(self, extra: Sequence[PatternSpec]) -> PatternSet:
        """This set plus ``extra``, on this set's backend, compiled once per set and ``extra``.

        Why: a caller that needs other patterns over the same block (the engine's envelope guard)
        gets both answers from one scan instead of two passes over the bytes; the ``extra`` ids
        are in each answer, and dropping them leaves this set's answer, in its order."""
        key = tuple(extra)
        joined = self._extended.get(key)
        if joined is None:
            specs = [info.spec for info in self._infos] + list(key)
            joined = self._extended[key] = PatternSet(specs, backend=self.backend, max_line=self.max_line)
        return joined

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def _prepare(self, text: str | bytes) -> bytes:
        data = text.encode("utf-8", "replace") if isinstance(text, str) else text
        if len(data) > self.max_line:
            data = data[: self.max_line]
        if data.endswith(b"\n"):
            data = data[:-1]
        return data

    def match(self, text: str | bytes) -> list[str]:
        """Ids of all patterns found in one line, in id order."""
        if not self._ids:
            return []
        ids = self._ids
        return [ids[n] for n in self._engine.match(self._prepare(text))]

    @property
    def scans_blocks(self) -> bool:
        """Whether :meth:`match_block` is one scan of the block (hyperscan, no pattern that needs
        every line re-checked): what keeps replay and batches at grep speed. An end-anchored regex
        without a literal it requires turns it off for the whole set."""
        return bool(self._ids) and self._engine.candidate_ends(b"") is not None

    def match_block(self, block: bytes) -> list[tuple[int, list[str]]]:
        """Scan many newline-separated lines at once; ``(line start offset, ids)`` per matching line.

        Same answer as calling :meth:`match` on each line, but with hyperscan one scan covers the
        whole block and only lines holding a possible match are re-checked one by one: this is
        what makes replaying recorded logs run at grep-like speed.
        """
        if not self._ids:
            return []
        ends = self._engine.candidate_ends(block)
        found: list[tuple[int, list[str]]] = []
        if ends is None:
            start = 0
            size = len(block)
            while start < size:
                stop = block.find(b"\n", start)
                if stop < 0:
                    stop = size
                ids = self.match(block[start:stop])
                if ids:
                    found.append((start, ids))
                start = stop + 1
            return found
        last_start = -1
        engine, ids_of, cap, size = self._engine, self._ids, self.max_line, len(block)
        for end in sorted(ends):
            # The line holding the match's last byte; or, for a match ending on a newline, the line
            # after it: a vetted pattern never matches the empty *line*, but ^\b or \bb? match empty
            # at a line's start (a match spanning lines just re-checks the next line, finding nothing).
            start = block.rfind(b"\n", 0, end - 1) + 1 if end > 0 and block[end - 1] != 0x0A else end
            if start == last_start:
                continue
            last_start = start
            stop = block.find(b"\n", start)
            # what match() does with the line (cut at max_line; it holds no newline), minus its checks
            hits = engine.match(block[start : min(stop if stop >= 0 else size, start + cap)])
            if hits:
                found.append((start, [ids_of[n] for n in hits]))
        return found
