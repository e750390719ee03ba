"""One JSON object per line (structured loggers, Docker's json-file lines, sidecars).

Level, message and time are taken from the usual keys (``level``/``levelname``/``severity``,
``msg``/``message``/``log``/``event``/``textPayload``, ``ts``/``time``/``timestamp``/``@timestamp``);
other scalar members become fields. Anything that is not a JSON object (invalid, an array, nested
too deep) gives ``None``: never an exception.
"""

from __future__ import annotations

import json
from typing import Any

from watcher.parsers.base import Parsed, normalize_level
from watcher.timefmt import parse_iso

KIND = "json"
_LEVEL_KEYS = ("level", "levelname", "severity", "lvl", "log.level")
MESSAGE_KEYS = ("msg", "message", "log", "event", "textPayload")  # textPayload: Cloud Logging
_TIME_KEYS = ("ts", "time", "timestamp", "@timestamp", "t")
_MAX_FIELDS = 64
_MAX_VALUE = 2048


def _time(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        v = float(value)
        if v > 1e17:  # nanoseconds
            return v / 1e9
        if v > 1e14:  # microseconds
            return v / 1e6
        if v > 1e11:  # milliseconds
            return v / 1e3
        return v if v > 0 else None
    if isinstance(value, str):
        return parse_iso(value)
    return None


def parse(line: str) -> Parsed | None:
    """Parse a JSON-object line; ``None`` for anything else."""
    parsed = _parse(line)
    return None if parsed is None else parsed[0]


def envelope(line: str) -> Parsed | None:
    """The record's view when one of :data:`MESSAGE_KEYS` carries its text (a wrapper around a
    server's line: :mod:`watcher.parsers.envelope`); ``None`` for any other line, including JSON
    records without a message member (Nginx's JSON access formats), which are matched whole."""
    parsed = _parse(line)
    if parsed is None or parsed[1] is None:
        return None
    return Parsed(KIND, parsed[1], parsed[0].level, parsed[0].ts, parsed[0].fields)


def _parse(line: str) -> tuple[Parsed, str | None] | None:
    """The parsed record, and the text of its message member (``None``: it has none)."""
    text = line.strip()
    if not text.startswith("{") or not text.endswith("}"):
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    level = ""
    for key in _LEVEL_KEYS:
        if key in obj:
            level = normalize_level(obj[key])
            break
    message: str | None = None
    for key in MESSAGE_KEYS:
        value = obj.get(key)
        if isinstance(value, str):
            message = value.rstrip("\n")
            break
    ts = None
    for key in _TIME_KEYS:
        if key in obj:
            ts = _time(obj[key])
            if ts is not None:
                break
    fields: dict[str, str] = {}
    for key, value in obj.items():
        if len(fields) >= _MAX_FIELDS:
            break
        if isinstance(value, str):
            fields[str(key)[:128]] = value[:_MAX_VALUE]
        elif isinstance(value, bool | int | float) or value is None:
            fields[str(key)[:128]] = json.dumps(value)
    return Parsed(KIND, message or text, level, ts, fields), message
