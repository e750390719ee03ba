"""Raw log line → :class:`Parsed` (level, message, timestamp, fields): pure functions, no I/O.

``parse(line, kind=None)`` is the entry point; ``kind`` is one of :data:`KINDS` when the source
declares its format, else the format is detected per line (:func:`detect`) or per container
(:class:`StickyDetector`). Each format lives in its own module with a ``parse`` function,
registered in :data:`PARSERS` as a :class:`Parser` (the family's base, in ``base.py``).
"""

from watcher.parsers.base import LEVELS, FunctionParser, Parsed, Parser, normalize_level
from watcher.parsers.detect import KINDS, PARSERS, RAW, StickyDetector, detect, parse
from watcher.parsers.docker_events import lifecycle_kind
from watcher.parsers.nginx import AccessLogFormat

__all__ = [
    "KINDS",
    "LEVELS",
    "PARSERS",
    "RAW",
    "AccessLogFormat",
    "FunctionParser",
    "Parsed",
    "Parser",
    "StickyDetector",
    "detect",
    "lifecycle_kind",
    "normalize_level",
    "parse",
]
