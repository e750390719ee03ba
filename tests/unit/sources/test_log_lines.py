"""Docker log lines: splitting across chunks, the 16 KiB cap, timestamps and the cursor."""

from __future__ import annotations

import random

import pytest

from watcher.inventory import matches_selector
from watcher.model import MAX_LINE_BYTES
from watcher.sources.docker_logs import (
    CursorTracker,
    LineSplitter,
    LogCursor,
    cap_message,
    since_param,
    split_timestamp,
)
from watcher.timefmt import parse_rfc3339_ns


def test_lines_split_correctly_whatever_the_chunking() -> None:
    text = b"".join(f"2024-05-01T10:00:00.{i:09d}Z line {i} \xc3\xa9\n".encode() for i in range(200))
    rng = random.Random(7)
    for _ in range(20):
        sp = LineSplitter()
        out: list[bytes] = []
        pos = 0
        while pos < len(text):
            step = rng.randint(1, 50)
            out.extend(line for line, _ in sp.feed(text[pos : pos + step]))
            pos += step
        assert sp.flush() is None
        assert out == text.split(b"\n")[:-1]


def test_unfinished_line_is_flushed_at_stream_end() -> None:
    sp = LineSplitter()
    assert sp.feed(b"a\nb") == [(b"a", False)]
    assert sp.flush() == (b"b", False)
    assert sp.flush() is None


def test_long_line_is_capped_and_marked_without_holding_it() -> None:
    sp = LineSplitter(cap=100)
    assert sp.feed(b"x" * 60) == []
    assert sp.feed(b"y" * 10_000) == []
    assert len(sp._buf) == 100  # memory bounded while the line goes on
    assert sp.feed(b"zz\nnext\n") == [(b"x" * 60 + b"y" * 40, True), (b"next", False)]


def test_cap_message_and_invalid_utf8() -> None:
    msg, truncated = cap_message(b"a" * (MAX_LINE_BYTES + 5), False)
    assert len(msg) == MAX_LINE_BYTES and truncated
    msg, truncated = cap_message(b"bad \xff\xfe bytes\r", False)
    assert msg == "bad \ufffd\ufffd bytes" and not truncated


def test_timestamps() -> None:
    assert split_timestamp(b"2024-05-01T10:00:00.123456789Z hello world") == (
        "2024-05-01T10:00:00.123456789Z",
        b"hello world",
    )
    assert split_timestamp(b"no timestamp here") is None
    ns = parse_rfc3339_ns("2024-05-01T10:00:00.123456789Z")
    assert ns == 1714557600_123456789
    assert parse_rfc3339_ns("2024-05-01T10:00:00.1234Z") == 1714557600_123400000
    assert parse_rfc3339_ns("2024-05-01T12:00:00+02:00") == 1714557600_000000000
    assert since_param(ns) == "1714557600.123456789"
    assert since_param(1714557600_000000001) == "1714557600.000000001"
    with pytest.raises(ValueError):
        parse_rfc3339_ns("yesterday")


def test_cursor_encoding() -> None:
    c = LogCursor("2024-05-01T10:00:00.5Z", 3)
    assert LogCursor.decode(c.encode()) == c
    assert LogCursor.decode(None) is None and LogCursor.decode("garbage") is None
    assert LogCursor("2024-05-01T10:00:00.5Z", 2).before(c)
    assert c.before(LogCursor("2024-05-01T10:00:00.500000001Z", 1))


T = "2024-05-01T10:00:0{}.000000000Z"


def test_tracker_from_scratch_counts_equal_timestamps() -> None:
    t = CursorTracker(None)
    got = [t.accept(ts) for ts in (T.format(1), T.format(1), T.format(2))]
    assert got == [LogCursor(T.format(1), 1), LogCursor(T.format(1), 2), LogCursor(T.format(2), 1)]


def test_tracker_skips_lines_already_seen_at_equal_timestamp() -> None:
    # Committed: 2 lines at second 1 were processed. Docker's inclusive ``since`` re-sends all 3.
    t = CursorTracker(LogCursor(T.format(1), 2))
    replay = [T.format(1), T.format(1), T.format(1), T.format(2), T.format(2)]
    got = [t.accept(ts) for ts in replay]
    assert got == [
        None,
        None,
        LogCursor(T.format(1), 3),
        LogCursor(T.format(2), 1),
        LogCursor(T.format(2), 2),
    ]


def test_tracker_drops_older_lines_from_the_replay_but_delivers_live_reordering() -> None:
    t = CursorTracker(LogCursor(T.format(5), 1))
    assert t.accept(T.format(4)) is None  # older than the cursor: already delivered
    assert t.accept(T.format(5)) is None
    assert t.accept(T.format(6)) == LogCursor(T.format(6), 1)
    # stdout/stderr reordering by a hair after the replay: delivered, cursor keeps the newest
    assert t.accept("2024-05-01T10:00:05.999999999Z") == LogCursor(T.format(6), 1)


def test_label_selector() -> None:
    sel = ["watcher.enable=true", "tier"]
    assert matches_selector({"watcher.enable": "true", "tier": "x"}, sel)
    assert not matches_selector({"watcher.enable": "false", "tier": "x"}, sel)
    assert not matches_selector({"watcher.enable": "true"}, sel)
