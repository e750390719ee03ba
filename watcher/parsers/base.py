"""What every parser returns, and the small helpers they share.

A parser (:class:`Parser`) maps ``str -> Parsed | None``: ``None`` means "not my format", so
callers can try another parser or fall back to the raw line. Parsers never raise on any input and do
bounded work per line: only anchored regular expressions without nested quantifiers, and
``str.find`` scans, on a line the source has already capped at 16 KiB.
"""

from __future__ import annotations

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
