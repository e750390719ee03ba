"""What every parser returns, and the small helpers they share.

A parser (:class:`Parser`) maps ``str -> Parsed | None``: ``None`` means "not my format", so
callers can try another parser or fall back to the raw line. Parsers never raise on any input and do
bounded work per line: only anchored regular expressions without nested quantifiers, and
``str.find`` scans, on a line the source has already capped at 16 KiB.
"""

from __future__ import annotations

import calendar
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily: parsing must not depend on the engine's types loading
    from watcher.model import LogRecord, Target

LEVELS = ("debug", "info", "warning", "error", "fatal")

_LEVEL_WORDS: dict[str, str] = {
    "trace": "debug",
    "debug": "debug",
    "dbg": "debug",
    "d": "debug",
    "info": "info",
    "information": "info",
    "notice": "info",
    "i": "info",
    "warn": "warning",
    "warning": "warning",
    "w": "warning",
    "error": "error",
    "err": "error",
    "e": "error",
    "critical": "fatal",
    "crit": "fatal",
    "fatal": "fatal",
    "f": "fatal",
    "panic": "fatal",
    "alert": "fatal",
    "emerg": "fatal",
    "emergency": "fatal",
    "severe": "error",
}


def normalize_level(word: object) -> str:
    """Map the many spellings of a level ("W", "WARN", "warning", 40, ...) to the model's five."""
    if isinstance(word, bool):
        return ""
    if isinstance(word, int | float):
        # numeric levels in JSON come from pino/bunyan: 10 trace, 20 debug, 30 info, 40 warn,
        # 50 error, 60 fatal (Python's JSON formatters write the level name instead)
        n = int(word)
        for floor, name in ((60, "fatal"), (50, "error"), (40, "warning"), (30, "info"), (1, "debug")):
            if n >= floor:
                return name
        return ""
    if not isinstance(word, str):
        return ""
    return _LEVEL_WORDS.get(word.strip().lower()[:16], "")


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parser's view of one line: enough to build a :class:`~watcher.model.LogRecord`."""

    kind: str  # the parser that understood the line: "tfserving", "nginx", ...
    message: str
    level: str = ""  # one of LEVELS or ""
    ts: float | None = None  # seconds since the epoch (UTC) when the line carries a timestamp
    fields: Mapping[str, str] = field(default_factory=dict)

    def to_record(self, target: Target, fallback_ts: float) -> LogRecord:
        """The record the engine consumes; the source's receive time stands in for a missing ts."""
        from watcher.model import LogRecord

        return LogRecord(
            target=target,
            ts=self.ts if self.ts is not None else fallback_ts,
            message=self.message,
            level=self.level,
            source=self.kind,
            fields=self.fields,
        )


class Parser(ABC):
    """One log format: ``parse(line)`` is the :class:`Parsed` view of the line, or ``None`` (not mine).

    Contract (``tests/unit/conformance/test_parser_conformance.py`` checks every registered parser on every
    sample line and on hostile input): pure and thread-safe (no state, no I/O); never raises, on
    any ``str`` (NUL bytes, lone surrogates, 16 KiB of one character); bounded work and output
    (the message and each field no longer than the line, at most 64 fields); and every line it
    accepts carries its own ``name`` as :attr:`Parsed.kind`. Calling the parser is ``parse``.
    """

    name: str

    @abstractmethod
    def parse(self, line: str) -> Parsed | None:
        """The parsed line, or ``None`` when the line is not in this parser's format."""

    def __call__(self, line: str) -> Parsed | None:
        return self.parse(line)


@dataclass(frozen=True, slots=True)
class FunctionParser(Parser):
    """A format whose parser is one module-level function (all the shipped formats are)."""

    name: str
    function: Callable[[str], Parsed | None]

    def parse(self, line: str) -> Parsed | None:
        return self.function(line)


def _num(text: str) -> int:
    """Digits only (callers check with ``str.isdigit`` first), as an int."""
    return int(text)


def epoch(year: int, month: int, day: int, hour: int, minute: int, second: int, frac: str = "") -> float | None:
    """UTC seconds for broken-down time, or None if out of range; ``frac`` is the digits after '.'."""
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    try:
        whole: int = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (OverflowError, ValueError):
        return None
    if frac and frac.isdigit():
        digits = frac[:9]
        return whole + int(digits) / float(10 ** len(digits))
    return float(whole)


def parse_iso(text: str) -> float | None:
    """``2024-05-01T10:00:00.123456789Z`` / ``... 10:00:00+02:00`` / ``2024-05-01 10:00:00`` → UTC."""
    t = text.strip()
    if len(t) < 19 or len(t) > 40:
        return None
    date, sep, time_ = t[:10], t[10], t[11:]
    if sep not in "T " or date[4] != "-" or date[7] != "-":
        return None
    y, mo, d = date[:4], date[5:7], date[8:10]
    hh, mm, ss = time_[:2], time_[3:5], time_[6:8]
    if not all(x.isdigit() for x in (y, mo, d, hh, mm, ss)) or time_[2] != ":" or time_[5] != ":":
        return None
    rest = time_[8:]
    frac = ""
    if rest.startswith((".", ",")):
        i = 1
        while i < len(rest) and rest[i].isdigit():
            i += 1
        frac, rest = rest[1:i], rest[i:]
    offset = 0
    if rest in ("", "Z", "z"):
        pass
    elif len(rest) in (5, 6) and rest[0] in "+-":
        digits = rest[1:].replace(":", "")
        if len(digits) != 4 or not digits.isdigit():
            return None
        offset = (int(digits[:2]) * 60 + int(digits[2:])) * 60 * (1 if rest[0] == "+" else -1)
    else:
        return None
    base = epoch(_num(y), _num(mo), _num(d), _num(hh), _num(mm), _num(ss), frac)
    return None if base is None else base - offset


MONTHS = {
    m: n for n, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)
}


def servable_fields(message: str, fields: dict[str, str]) -> None:
    """Pull ``model_name``/``version`` out of TF Serving's ``{name: X version: N}`` servable ids."""
    at = message.find("{name: ")
    if at >= 0:
        end = message.find("}", at, at + 300)
        if end > 0:
            inner = message[at + 7 : end]
            name, sep, version = inner.partition(" version: ")
            if sep and name and " " not in name:
                fields["model_name"] = name
                fields["version"] = version.strip()
                return
    for marker in ("No versions of servable ", "(Re-)adding model: ", "Servable not found for request: "):
        at = message.find(marker)
        if at >= 0:
            tail = message[at + len(marker) : at + len(marker) + 256]
            name = tail.split(" ", 1)[0].strip()
            if marker.startswith("Servable"):
                # "Latest(mnist)" / "Specific(mnist, 3)"
                open_, close = name.find("("), tail.find(")")
                if open_ >= 0 and close > open_:
                    inner = tail[open_ + 1 : close]
                    name, _, ver = inner.partition(",")
                    if ver.strip():
                        fields["version"] = ver.strip()
            if name:
                fields["model_name"] = name
            return
