"""100 000 random and adversarial lines go through the engine without error, in bounded time.

Log lines are untrusted input: huge, binary, or built to make a backtracking regex explode. The
time bound here is deliberately loose (it guards against catastrophic behaviour, not speed;
speed is measured in benchmarks/log_throughput.py).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.model import LogRecord, Target
from watcher.rulepack.compile import load_packs

PACK = """
pack: hostile
rules:
  - id: many-a
    match: {log: 'a+b', regex: true}
    predicts: crash
  - id: alloc
    match: {log: 'Allocation of [0-9]+ exceeds [0-9]+% of (free )?system memory', regex: true}
    when: {count: 3, within: 1m}
    predicts: oom
  - id: upstream
    match: {log: 'upstream timed out', source: nginx}
    predicts: upstream_failure
  - id: json-error
    match: {log: '"level": "error"'}
    predicts: http_5xx
"""


def hostile_lines(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    shapes = [
        lambda: "a" * rng.randrange(1, 20_000) + "!",  # near-miss for a+b, longer than the cap
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).decode("latin-1"),
        lambda: "Allocation of " + "9" * rng.randrange(1, 5000) + " exceeds",  # near-miss
        lambda: "{" * rng.randrange(1, 3000) + '"level": "error"',
        lambda: '{"level": "error", "msg": "' + "\\" * rng.randrange(1, 3000) + '"}',
        lambda: "2024/05/01 10:00:00 [error] 1#1: *1 upstream timed out" + ", upstream: " * rng.randrange(1, 2000),
        lambda: "2024-05-01 10:00:00.000000: F " + "]" * rng.randrange(1, 3000),
        lambda: "\x00\ufffd\u202e" * rng.randrange(1, 100),
        lambda: (
            "".join(chr(rng.randrange(1, 0x10FFFF)) for _ in range(50))
            .encode("utf-8", "replace")
            .decode("utf-8", "replace")
        ),
        lambda: "ordinary healthy line number " + str(rng.random()),
    ]
    return [shapes[i % len(shapes)]() for i in range(n)]


def test_hundred_thousand_hostile_lines(tmp_path: Path) -> None:
    pack = tmp_path / "p.yaml"
    pack.write_text(PACK)
    clock = ManualClock(1_700_000_000.0)
    engine = Engine(load_packs([pack]), clock)
    lines = hostile_lines(100_000)
    targets = [Target(f"c{i}") for i in range(5)]
    started = time.perf_counter()
    for i in range(0, len(lines), 500):
        batch = [LogRecord(targets[(i + j) % 5], clock.now(), line) for j, line in enumerate(lines[i : i + 500])]
        engine.feed_batch(batch)
        clock.advance(1)
        engine.tick()
    elapsed = time.perf_counter() - started
    assert engine.stats.lines == 100_000
    assert elapsed < 120, f"hostile input took {elapsed:.1f}s"
    # the one-by-one path survives the same lines
    for line in lines[:5_000]:
        engine.feed(LogRecord(targets[0], clock.now(), line))
