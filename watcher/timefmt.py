"""Timestamps in and out of the watcher: one module, so every part reads and writes time the same way.

Two kinds of input, on purpose with two strictness levels:

- **RFC 3339** as Docker and Alertmanager write it (``2024-05-01T10:00:00.123456789Z``):
  :func:`parse_rfc3339_ns` (exact integer nanoseconds, for log cursors that must not drift by a
  float rounding), :func:`parse_rfc3339` (seconds) and :func:`docker_time` (Docker's container
  state times, where Go's zero time means "never"). Malformed text raises :class:`ValueError`:
  these stamps come from an API, and a bad one is a bug worth seeing.
- **Log-line stamps** (:func:`parse_iso`), ISO 8601 as applications print it: ``T`` or a space,
  ``.`` or ``,`` before the fraction, ``Z``, ``+02:00``, ``+0200`` or no zone (UTC). Lines are
  untrusted, so this one returns None instead of raising and never does more than bounded work.

:func:`epoch` is the broken-down-time core the log parsers use for their own formats (glog,
Nginx's ``[01/May/2024:10:00:00 +0000]``), and :func:`format_rfc3339` writes what Alertmanager reads.
"""

from __future__ import annotations

import calendar
import functools
import re
from datetime import UTC, datetime

__all__ = ["docker_time", "epoch", "format_rfc3339", "is_rfc3339", "parse_iso", "parse_rfc3339", "parse_rfc3339_ns"]

_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$",
)
_SECONDS_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})$")
_NS = 1_000_000_000


# -- RFC 3339 (APIs) -------------------------------------------------------------------------------
def parse_rfc3339_ns(ts: str) -> int:
    """An RFC 3339 / RFC3339Nano timestamp as integer nanoseconds since the epoch (exact, no float).

    Hot path (every Docker log line): UTC stamps reuse the cached whole-second part.
    """
    if len(ts) >= 20 and ts[-1] == "Z" and ts[19] in ".Z":
        frac = ts[20:-1]
        if len(frac) <= 9 and (not frac or frac.isdigit()):
            return _utc_seconds(ts[:19]) * _NS + int(frac.ljust(9, "0") or 0)
    m = _RFC3339_RE.match(ts)
    if m is None:
        raise ValueError(f"not an RFC3339 timestamp: {ts!r}")
    seconds = _utc_seconds(ts[:19])
    frac = (m.group(7) or "").ljust(9, "0")
    tz = m.group(8)
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        seconds -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return seconds * _NS + int(frac)


def is_rfc3339(text: str) -> bool:
    """Whether ``text`` has RFC 3339 shape (what :func:`parse_rfc3339_ns` reads); a cheap check."""
    return _RFC3339_RE.match(text) is not None


@functools.lru_cache(maxsize=4096)
def _utc_seconds(prefix: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS`` -> epoch seconds; raises ValueError when malformed."""
    m = _SECONDS_RE.match(prefix)
    if m is None:
        raise ValueError(f"not an RFC3339 timestamp: {prefix!r}")
    return calendar.timegm((*(int(g) for g in m.groups()), 0, 0, 0))


def parse_rfc3339(ts: str) -> float:
    """An RFC 3339 timestamp as epoch seconds (whole seconds plus the fraction, each exact)."""
    whole, frac_ns = divmod(parse_rfc3339_ns(ts), _NS)
    return whole + frac_ns / _NS if frac_ns else float(whole)


def docker_time(text: str) -> float:
    """Docker's container state times (``State.StartedAt``...) as epoch seconds; 0.0 for "never".

    Docker reports a time that has not happened as Go's zero time (``0001-01-01T00:00:00Z``),
    and the watcher's own state dicts use "" for it; both read as 0.0 so "started after X" is
    simply false.
    """
    if not text or text.startswith("0001-"):
        return 0.0
    return parse_rfc3339(text)


def format_rfc3339(ts: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds (``2024-05-01T10:00:00.123Z``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- log lines (untrusted) -------------------------------------------------------------------------
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
    base = epoch(int(y), int(mo), int(d), int(hh), int(mm), int(ss), frac)
    return None if base is None else base - offset
