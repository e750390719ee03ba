"""The one time module: RFC 3339 in and out, Docker's state times, log-line stamps."""

from __future__ import annotations

import calendar
import random
import time

import pytest

from watcher.timefmt import docker_time, format_rfc3339, is_rfc3339, parse_iso, parse_rfc3339, parse_rfc3339_ns


def _executor_docker_time(text: str) -> float:
    """What the executor's own ``_docker_time`` computed before it moved here (the reference)."""
    if not text or text.startswith("0001-"):
        return 0.0
    whole, _, rest = text.rstrip("Z").partition(".")
    digits = "".join(ch for ch in rest if ch.isdigit())[:9]
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + (float(f"0.{digits}") if digits else 0.0)


def test_docker_time_reads_never_as_zero() -> None:
    assert docker_time("") == 0.0
    assert docker_time("0001-01-01T00:00:00Z") == 0.0
    assert docker_time("2024-05-01T10:00:00.5Z") == 1714557600.5


def test_docker_time_agrees_with_the_executors_old_parser_bit_for_bit() -> None:
    rng = random.Random(12)
    for _ in range(2000):
        whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rng.randrange(0, 4_000_000_000)))
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 9)))
        text = f"{whole}.{digits}Z" if digits else f"{whole}Z"
        assert docker_time(text) == _executor_docker_time(text), text


def test_rfc3339_offsets_fractions_and_errors() -> None:
    assert parse_rfc3339_ns("2024-05-01T12:00:00.000000001+02:00") == 1714557600_000000001
    assert parse_rfc3339("2024-05-01T09:30:00-00:30") == 1714557600.0
    for bad in ("yesterday", "2024-05-01 10:00:00Z", "2024-05-01T10:00:00.1234567890Z", "2024-05-01T10:00:00"):
        assert not is_rfc3339(bad)
        with pytest.raises(ValueError):
            parse_rfc3339_ns(bad)
    with pytest.raises(ValueError):
        docker_time("not a time")


def test_format_and_parse_round_trip_at_millisecond_precision() -> None:
    for ts in (0.0, 1714557600.123, 1999999999.999):
        assert parse_rfc3339(format_rfc3339(ts)) == pytest.approx(ts, abs=5e-4)
    assert format_rfc3339(1714557600.5) == "2024-05-01T10:00:00.500Z"


def test_log_line_stamps_are_lenient_and_never_raise() -> None:
    assert parse_iso("2024-05-01 10:00:00") == parse_iso("2024-05-01T10:00:00Z") == 1714557600.0
    assert parse_iso("2024-05-01T12:00:00,5+0200") == 1714557600.5
    assert parse_iso("2024-05-01T10:00:00.123456789Z") == pytest.approx(parse_rfc3339("2024-05-01T10:00:00.123456789Z"))
    for junk in ("", "2024-13-01T10:00:00Z", "2024-05-01T10:00:00 PST", "x" * 30):
        assert parse_iso(junk) is None
