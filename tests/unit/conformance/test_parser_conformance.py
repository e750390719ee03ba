"""Every registered parser honours the :class:`~watcher.parsers.base.Parser` contract.

Walks :data:`watcher.parsers.PARSERS` (the registry ``parse``/``detect`` use), so a new format is
covered the moment it registers: on every real sample line kept in ``tests/unit/parsers/samples``
and on hostile input, it never raises, stays within the caps, and names itself in what it returns.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from watcher.model import MAX_LINE_BYTES
from watcher.parsers import PARSERS, Parsed, Parser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parsers"))
from parser_samples import SAMPLES, sample_lines

MAX_LINE = MAX_LINE_BYTES  # what sources hand the parsers at most
ALL_SAMPLES = [line for path in sorted(SAMPLES.glob("*.log")) for line in sample_lines(path.stem)]
HOSTILE = [
    "",
    "\x00" * 64,
    "2024-05-01 10:00:00.000000: E x.cc:1] \x00\x00 nul in the message",
    '{"level": "error", "msg": "\x00"}',
    "\udcff\udcfe invalid utf-8 decoded with surrogateescape",
    "\ufffd\ufffd invalid utf-8 decoded with errors=replace",
    "\ud800" * 100,
    "{" * MAX_LINE,
    "[" * MAX_LINE,
    "I0501 10:00:00.1 " + " " * (MAX_LINE - 20),
    "2024/05/01 10:00:00 [error] 1#1: " + "upstream: " * 1600,
    '1.2.3.4 - - [01/May/2024:10:00:00 +0000] "GET /' + "a" * (MAX_LINE - 60) + ' HTTP/1.1" 200 1',
    "StatusCode.UNAVAILABLE " * 700,
    "Killed process 1 (" + "x" * (MAX_LINE - 30) + ")",
    "2024-05-01T10:00:00Z container die x (" + "a=b, " * 3000 + ")",
    '{"msg": "' + "m" * (MAX_LINE - 20) + '"}',
    "{" + ",".join(f'"k{i}": {i}' for i in range(1500)) + "}",
    "x" * MAX_LINE,
]


@pytest.fixture(params=sorted(PARSERS), ids=str)
def parser(request: pytest.FixtureRequest) -> Parser:
    p = PARSERS[request.param]
    assert p.name == request.param  # registered under its own name
    return p


def check(parser: Parser, line: str) -> Parsed | None:
    parsed = parser(line)
    assert parsed == parser.parse(line)  # calling a parser is ``parse``
    if parsed is None:
        return None
    assert parsed.kind == parser.name
    assert isinstance(parsed.message, str) and len(parsed.message) <= len(line)
    assert parsed.level in ("", "debug", "info", "warning", "error", "fatal")
    assert parsed.ts is None or isinstance(parsed.ts, float)
    assert len(parsed.fields) <= 64
    for key, value in parsed.fields.items():
        assert isinstance(key, str) and isinstance(value, str)
        assert len(value) <= len(line)
    return parsed


def test_every_parser_is_a_parser() -> None:
    assert PARSERS and all(isinstance(p, Parser) for p in PARSERS.values())


def test_on_every_sample_line(parser: Parser) -> None:
    accepted = [line for line in ALL_SAMPLES if check(parser, line) is not None]
    assert accepted, f"{parser.name} accepts none of the sample lines: it has no samples, or it is broken"


def test_accepts_its_own_samples(parser: Parser) -> None:
    own = SAMPLES / f"{parser.name}.log"
    if not own.exists():
        pytest.skip(f"no samples/{parser.name}.log")
    lines = sample_lines(parser.name)
    assert sum(check(parser, line) is not None for line in lines) >= len(lines) // 2


def test_hostile_input_never_raises_and_is_bounded(parser: Parser) -> None:
    start = time.perf_counter()
    for line in HOSTILE:
        check(parser, line)
        for cut in (1, 7, 40, 300):
            check(parser, line[:cut])
    for base in ALL_SAMPLES[::3]:
        for junk in ("\x00", "\udcff", "\ufffd", "\u202e"):
            check(parser, base[: len(base) // 2] + junk + base[len(base) // 2 :])
    assert time.perf_counter() - start < 5, f"{parser.name} is slow on hostile input"
