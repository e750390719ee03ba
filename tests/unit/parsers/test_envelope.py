"""The wrappers real lines arrive in come off exactly, and nothing else does (watcher/parsers/envelope.py)."""

from __future__ import annotations

import json
import time

import pytest

from watcher.parsers.envelope import MAX_LAYERS, unwrap, wrapped_line_starts

TFS = "2024-05-01 10:00:00.000000: F tensorflow_serving/model_servers/server.cc:1] Check failed: ok"
FRAME = "    @     0x7f3b2c1d4e5f  (unknown)"  # a core-dump report's continuation line keeps its indent

WRAPPED = [
    ("tfs-1    | " + TFS, TFS, ("compose",)),
    ("serving_tfs_1  | " + TFS, TFS, ("compose",)),
    ("tfs-1  | " + FRAME, FRAME, ("compose",)),
    ("\x1b[36mtfs-1  | \x1b[0m" + TFS, TFS, ("compose",)),  # copied from a colour terminal
    ("tfs-1  |", "", ("compose",)),  # Compose's empty line
    ("2023-10-01T12:00:00.123456789Z " + TFS, TFS, ("timestamp",)),  # kubectl logs --timestamps
    ("2023-10-01T12:00:00.123456789+02:00 " + FRAME, FRAME, ("timestamp",)),
    (
        "Oct 01 12:00:00 host kernel: Out of memory: Killed process 1 (x)",
        "Out of memory: Killed process 1 (x)",
        ("syslog",),
    ),
    ("Oct  1 12:00:00 host dockerd[123]: " + TFS, TFS, ("syslog",)),
    ("[  518.051234] oom_reaper: reaped process 1 (x)", "oom_reaper: reaped process 1 (x)", ("dmesg",)),
    ("[pod/tfs-0/tfs] " + TFS, TFS, ("kubectl_prefix",)),
    (json.dumps({"log": TFS + "\n", "stream": "stderr", "time": "2023-10-01T12:00:00Z"}), TFS, ("json",)),
    (json.dumps({"message": TFS}), TFS, ("json",)),
    (json.dumps({"msg": TFS}), TFS, ("json",)),
    (json.dumps({"textPayload": FRAME}), FRAME, ("json",)),
    ("tfs-1  | 2023-10-01T12:00:00.1Z " + TFS, TFS, ("compose", "timestamp")),  # docker compose logs -t
    (json.dumps({"log": json.dumps({"level": "error", "msg": "boom"}) + "\n"}), "boom", ("json", "json")),
    (json.dumps({"log": "tfs-1  | " + FRAME + "\n"}), FRAME, ("json", "compose")),
]

NOT_WRAPPED = [
    TFS,
    FRAME,
    "E0501 10:00:00.123456    12 tensorflow_serving/util/retrier.cc:37] Loading servable failed",
    '127.0.0.1 - - [01/May/2024:10:00:00 +0000] "GET /a|b HTTP/1.1" 502 0 "-" "curl/8"',
    "2024/05/01 10:00:00 [error] 13#13: *1 upstream timed out (110: Connection timed out)",
    "[2024-11-05 09:25:59 +0000] [16] [CRITICAL] WORKER TIMEOUT (pid:17)",
    "[evhttp_server.cc : 238] NET_LOG: Entering the event loop ...",
    "2024-05-01T10:00:00.000000000Z container die 3f2a (exitCode=137, name=tfs-1)",  # docker events keep theirs
    '{"time":"2024-05-01T10:00:00+00:00","status":"502","upstream_status":"502"}',  # Nginx JSON: matched whole
    "Traceback (most recent call last):",
    "| a | b |",
    "",
]


@pytest.mark.parametrize(("line", "inner", "shapes"), WRAPPED)
def test_each_wrapper_comes_off_exactly(line: str, inner: str, shapes: tuple[str, ...]) -> None:
    got = unwrap(line)
    assert got is not None
    assert (got.text, got.shapes) == (inner, shapes)


@pytest.mark.parametrize("line", NOT_WRAPPED)
def test_a_line_in_no_wrapper_is_left_alone(line: str) -> None:
    assert unwrap(line) is None


def test_a_json_record_keeps_its_level_and_members_but_not_its_text_twice() -> None:
    got = unwrap(json.dumps({"level": "error", "msg": "model failed", "model": "m"}))
    assert got is not None
    assert (got.text, got.level) == ("model failed", "error")
    assert dict(got.fields) == {"level": "error", "model": "m"}


def test_a_multi_line_json_message_is_one_line() -> None:
    got = unwrap(json.dumps({"message": 'Traceback (most recent call last):\n  File "a.py", line 1\r\nValueError: x'}))
    assert got is not None and got.text == 'Traceback (most recent call last):   File "a.py", line 1 ValueError: x'


def test_wrappers_in_wrappers_stop_after_max_layers_in_bounded_time() -> None:
    nested = "a | " * 4000 + "x"  # 16 KiB of Compose-like prefixes
    started = time.perf_counter()
    got = unwrap(nested)
    assert got is not None and len(got.shapes) == MAX_LAYERS
    for hostile in ("{" * 16_000, '{"msg": "' + "\\" * 16_000 + '"}', "[" + " " * 16_000, "Oct 01 " + "1" * 16_000):
        unwrap(hostile)
    assert time.perf_counter() - started < 1.0


def test_the_block_guard_finds_every_line_unwrap_peels() -> None:
    """The engine unwraps in a block only the lines this scan names: missing one would blind it."""
    lines = [line for line, _, _ in WRAPPED] + NOT_WRAPPED
    block = "\n".join(lines).encode()
    starts = wrapped_line_starts(block)
    if starts is None:
        pytest.skip("no hyperscan: the engine unwraps every line itself")
    offsets, position = [], 0
    for line in lines:
        offsets.append(position)
        position += len(line.encode()) + 1
    flagged = {lines[offsets.index(s)] for s in starts}
    assert {line for line in lines if unwrap(line) is not None} <= flagged
    assert TFS not in flagged  # ordinary lines are not sent to Python
