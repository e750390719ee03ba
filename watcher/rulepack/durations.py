"""Durations the way Prometheus writes them (``90s``, ``10m``, ``1h30m``, ``500ms``, ``2d``).

Rule authors already know this syntax from Prometheus rule files and PromQL range selectors, so
packs use it too instead of bare numbers whose unit a reader would have to guess. The only bare
number accepted is ``0`` (as Prometheus does), because ``for: 0`` is the natural way to say
"no delay".
"""

from __future__ import annotations

import re

_UNITS: tuple[tuple[str, float], ...] = (
    ("y", 365 * 86400.0),
    ("w", 7 * 86400.0),
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)

# Units must appear at most once each and from largest to smallest, exactly as in Prometheus'
# model.ParseDuration; this keeps "1m1h" (almost certainly a typo) from meaning 61 minutes.
DURATION_PATTERN = r"^(?:0|(?:[0-9]+y)?(?:[0-9]+w)?(?:[0-9]+d)?(?:[0-9]+h)?(?:[0-9]+m)?(?:[0-9]+s)?(?:[0-9]+ms)?)$"
_DURATION_RE = re.compile(
    r"^(?:(?P<y>[0-9]+)y)?(?:(?P<w>[0-9]+)w)?(?:(?P<d>[0-9]+)d)?(?:(?P<h>[0-9]+)h)?"
    r"(?:(?P<m>[0-9]+)m)?(?:(?P<s>[0-9]+)s)?(?:(?P<ms>[0-9]+)ms)?$"
)
EXPECTED_FORMAT = "expected a Prometheus duration such as 500ms, 90s, 10m, 1h30m or 2d"


class DurationError(ValueError):
    """A string that is not a Prometheus duration; the message says what was expected."""


def parse_duration(text: str) -> float:
    """Return the duration in seconds, or raise :class:`DurationError` naming the expected format."""
    if text == "0":
        return 0.0
    match = _DURATION_RE.match(text) if len(text) <= 64 else None
    if match is None or not text:
        raise DurationError(f"invalid duration {text!r}: {EXPECTED_FORMAT}")
    return sum(float(match.group(unit)) * factor for unit, factor in _UNITS if match.group(unit))


def format_duration(seconds: float) -> str:
    """Render seconds back in the same syntax (largest units first), for messages and round trips."""
    if seconds < 0:
        raise DurationError(f"negative duration {seconds!r}")
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    parts: list[str] = []
    for unit, factor in _UNITS:
        unit_ms = round(factor * 1000)
        count, millis = divmod(millis, unit_ms)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
