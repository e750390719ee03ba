"""The wrappers a log line arrives in, peeled off before the line is matched and parsed.

Why: the same TF Serving, Nginx or kernel message reaches the watcher in many shapes: behind a
``docker compose logs`` prefix (``tfs-1    | ``), a ``kubectl logs --timestamps`` or
``docker logs -t`` timestamp, ``kubectl logs --prefix`` (``[pod/tfs-0/tfs] ``), a journald/syslog
prefix (``Oct 01 12:00:00 host kernel: ``), a dmesg timestamp (``[  518.051234] ``), or inside a JSON
record whose message member carries the text (Docker's json-file ``{"log": "...\\n", ...}``,
``{"message": ...}``, ``{"msg": ...}``, Cloud Logging's ``{"textPayload": ...}``). Rule patterns and
format detection are written for the server's own text; :func:`unwrap` gives them that text.

Safety: only a prefix of one of the fixed shapes below is removed, at the start of the line, by
anchored patterns with bounded repeats (linear time), at most :data:`MAX_LAYERS` times; a JSON
record is decoded by the JSON parser (:mod:`watcher.parsers.jsonlog`), never by hand. Nothing a
wrapper says (a Compose service name, a journald host) is used to attribute the line: the line
stays the reporting container's. The engine does not unwrap a load balancer's own lines (see
:meth:`watcher.engine.Engine.parse`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from watcher.matcher import PatternSet, PatternSpec
from watcher.parsers import docker_events, jsonlog
from watcher.parsers.base import Parsed

MAX_LAYERS = 4  # compose + kubectl timestamp + Docker json-file + a JSON logger's record, at most

_ANSI = r"(?:\x1b\[[0-9;]{0,16}m)?"  # a colour code around Compose's prefix when copied from a terminal
# Compose v2 ``tfs-1    | ``, v1 ``serving_tfs_1  | ``: service name, padding, a bar, one space
_COMPOSE = re.compile(_ANSI + r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}" + _ANSI + r" {1,64}\|" + _ANSI + r"(?: |$)" + _ANSI)
# RFC 3339 as kubectl --timestamps and docker logs -t write it (also journalctl -o short-iso)
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]{1,9})?(?:Z|[+-][0-9]{2}:?[0-9]{2})? "
)
# journalctl / syslog: ``Oct 01 12:00:00 host kernel: ``, ``Oct  1 12:00:00 host dockerd[123]: ``
_SYSLOG = re.compile(
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})? "
    r"[^\s]{1,255} [^\s:\[]{1,128}(?:\[[0-9]{1,10}\])?: "
)
_DMESG = re.compile(r"\[ {0,12}[0-9]{1,12}\.[0-9]{1,9}\] ")
_KUBECTL_PREFIX = re.compile(r"\[pod/[^\s\]]{1,512}\] ")
_MONTHS = frozenset(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"))

SHAPES = ("compose", "timestamp", "syslog", "dmesg", "kubectl_prefix", "json")

# What every wrapped line starts with (a superset: the shapes above decide). As a PatternSet it finds
# the wrapped lines of a whole block in the same kind of scan as the rules, so a block of ordinary
# lines pays one hyperscan pass for the wrappers, not a Python test per line.
_MONTH_WORDS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
GUARD = (
    r"^(?:\{|\[(?: |[0-9]{1,12}\.|pod/)|[0-9]{4}-[0-9]{2}-[0-9]{2}T|(?:" + _MONTH_WORDS + r") "
    r"|(?:\x1b\[[0-9;]{0,16}m)?[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(?:\x1b\[[0-9;]{0,16}m)? {1,64}\|)"
)
WRAPPED_ID = "<wrapped>"  # no rule id has this shape (``RULE_ID_PATTERN``), so it joins a rule set's scan
GUARD_SPEC = PatternSpec(WRAPPED_ID, GUARD, is_regex=True)
_BLOCK_GUARD = PatternSet([GUARD_SPEC])


def wrapped_line_starts(block: bytes) -> list[int] | None:
    """Start offsets of the lines of a newline-separated block that may carry a wrapper, or
    ``None`` when only a line-by-line test is fast here (no hyperscan: :func:`unwrap` each line).

    The engine asks the same question inside its own block scan (:data:`GUARD_SPEC` joined to the
    rules' patterns, one pass over the bytes); this is the guard alone, and what its tests check."""
    if _BLOCK_GUARD.backend != "hyperscan":
        return None
    return [start for start, _ in _BLOCK_GUARD.match_block(block)]


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """The text inside the wrappers, and what the wrappers said about it.

    ``shapes`` lists the wrappers outermost first (names from :data:`SHAPES`). ``level`` and
    ``fields`` come from the innermost JSON record (its level member, its other scalar members),
    so a structured logger's ``{"level": "error", "msg": ...}`` keeps its level once unwrapped."""

    text: str
    shapes: tuple[str, ...]
    level: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)


def _peel(line: str) -> tuple[str, str, Parsed | None] | None:
    """One wrapper off the front of ``line``: (shape, the rest, the JSON view), or ``None``.

    Cheap guards on the first characters first: most lines have no wrapper and must cost almost
    nothing (``line.find`` of one character, memchr speed, for Compose's bar; no regular expression)."""
    first = line[:1]
    if first == "{":
        record = jsonlog.envelope(line)
        return None if record is None else ("json", record.message, record)
    if first == "[":
        m = _DMESG.match(line) or _KUBECTL_PREFIX.match(line)
        if m is None:
            return None
        return ("dmesg" if line[1:2] != "p" else "kubectl_prefix"), line[m.end() :], None
    if first.isdigit() and line[4:5] == "-" and line[10:11] == "T":
        m = _TIMESTAMP.match(line)
        if m is None or docker_events.parse(line) is not None:  # ``docker events`` keeps its own timestamp
            return None
        return "timestamp", line[m.end() :], None
    if line[:3] in _MONTHS and line[3:4] == " ":
        m = _SYSLOG.match(line)
        return None if m is None else ("syslog", line[m.end() :], None)
    if line.find("|", 1, 260) > 0:
        m = _COMPOSE.match(line)
        if m is not None:
            return "compose", line[m.end() :], None
    return None


def unwrap(line: str) -> Unwrapped | None:
    """The line without its wrappers, or ``None`` when it has none (the common case, no copy made).

    A JSON message spanning several lines (a traceback logged as one record) is joined with spaces:
    one record is one line to the patterns, as in a block scan."""
    first = line[:1]
    if first != "{" and first != "[" and line[10:11] != "T" and line[3:4] != " " and line.find("|", 1, 260) < 0:
        return None  # no wrapper can start this line: the common case, decided without a call
    peeled = _peel(line)
    if peeled is None:
        return None
    shapes: list[str] = []
    record: Parsed | None = None
    text = line
    while peeled is not None and len(shapes) < MAX_LAYERS:
        shape, text, json_view = peeled
        shapes.append(shape)
        if json_view is not None:
            record = json_view
            text = text.rstrip("\r\n")
            if "\n" in text or "\r" in text:
                text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
        peeled = _peel(text)
    if record is None:
        return Unwrapped(text, tuple(shapes))
    fields = {k: v for k, v in record.fields.items() if k not in jsonlog.MESSAGE_KEYS}
    return Unwrapped(text, tuple(shapes), record.level, fields)
