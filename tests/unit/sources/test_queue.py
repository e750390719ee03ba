"""The queue between sources and the engine: never blocks, bounded, fair under one source's flood."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from watcher.model import LogRecord, Target
from watcher.retry import Backoff
from watcher.sources.base import Envelope, SignalQueue


def env(source: str, i: int = 0) -> Envelope:
    return Envelope(LogRecord(Target(source), float(i), f"line {i}"), source, (f"c/{source}", str(i)))


def test_round_robin_under_one_source_flood() -> None:
    q = SignalQueue(max_per_source=1000, max_total=10_000)
    for i in range(1000):
        q.put(env("flood", i))
    for i in range(5):
        q.put(env("quiet-a", i))
        q.put(env("quiet-b", i))
    batch = q.get_batch(max_items=15, timeout_s=0)
    counts = Counter(e.source for e in batch)
    # Every quiet source gets all of its 5 lines in the first 15 despite 1000 flood lines ahead.
    assert counts == {"flood": 5, "quiet-a": 5, "quiet-b": 5}
    # Order within a source is kept.
    assert [e.signal.ts for e in batch if e.source == "flood"] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_rotation_across_small_batches() -> None:
    q = SignalQueue(100, 1000)
    for s in ("a", "b", "c"):
        for i in range(3):
            q.put(env(s, i))
    firsts = [q.get_batch(max_items=1, timeout_s=0)[0].source for _ in range(6)]
    assert sorted(firsts[:3]) == ["a", "b", "c"] and sorted(firsts[3:]) == ["a", "b", "c"]


def test_drops_are_counted_per_source_and_memory_is_bounded() -> None:
    q = SignalQueue(max_per_source=10, max_total=15)
    kept = [q.put(env("flood", i)) for i in range(100)]
    assert sum(kept) == 10 and q.dropped == {"flood": 90}
    assert all(q.put(env("other", i)) for i in range(5))
    assert not q.put(env("third"))  # total bound reached
    stats = q.stats()
    assert stats["depth"] == 15 and stats["dropped"] == {"flood": 90, "third": 1} and stats["dropped_total"] == 91
    assert len(q.get_batch(100, 0)) == 15 and q.depth == 0
    assert q.stats()["depth_by_source"] == {}  # emptied buffers are forgotten


def test_get_batch_waits_and_times_out() -> None:
    q = SignalQueue(10, 10)
    t = time.monotonic()
    assert q.get_batch(10, timeout_s=0.2) == []
    assert time.monotonic() - t >= 0.19
    threading.Timer(0.1, lambda: q.put(env("late"))).start()
    t = time.monotonic()
    got = q.get_batch(10, timeout_s=5)
    assert [e.source for e in got] == ["late"] and time.monotonic() - t < 2


def test_thread_safety_many_producers() -> None:
    q = SignalQueue(max_per_source=100_000, max_total=1_000_000)
    n, producers = 5000, 8
    received: list[Envelope] = []
    done = threading.Event()

    def consume() -> None:
        while not done.is_set() or q.depth:
            received.extend(q.get_batch(256, 0.05))

    consumer = threading.Thread(target=consume)
    consumer.start()
    threads = [
        threading.Thread(target=lambda s=s: [q.put(env(f"p{s}", i)) for i in range(n)]) for s in range(producers)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    done.set()
    consumer.join()
    assert len(received) == n * producers and not q.dropped
    per = Counter(e.source for e in received)
    assert set(per.values()) == {n}


def test_bad_bounds_and_backoff() -> None:
    with pytest.raises(ValueError):
        SignalQueue(0, 10)
    b = Backoff(0.5, 4.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_a_lingering_consumer_takes_lines_arriving_one_at_a_time_as_one_batch() -> None:
    """A fleet's followers put lines one by one: with a linger the engine gets them together (one
    pass, one cursor commit), without one it would take the first line alone."""
    q = SignalQueue()
    got: list[list[Envelope]] = []
    consumer = threading.Thread(target=lambda: got.append(q.get_batch(100, timeout_s=5, linger_s=0.5)))
    consumer.start()
    time.sleep(0.05)  # asleep on the empty queue
    for i in range(5):
        q.put(env(f"r{i}", i))  # the first put wakes it; the rest arrive while it lingers
    consumer.join(5)
    assert [e.source for e in got[0]] == ["r0", "r1", "r2", "r3", "r4"]
    assert q.get_batch(100, timeout_s=0, linger_s=0.5) == []  # an empty queue does not linger


def test_a_full_batch_does_not_linger() -> None:
    q = SignalQueue()
    for i in range(10):
        q.put(env("a", i))
    started = time.monotonic()
    assert len(q.get_batch(10, timeout_s=0, linger_s=30)) == 10
    assert time.monotonic() - started < 20  # taken at once, not after the 30 s linger


def test_put_many_keeps_each_sources_bound_and_counts_each_drop_against_its_own_source() -> None:
    q = SignalQueue(max_per_source=3, max_total=5)
    kept = q.put_many([env("busy", i) for i in range(6)] + [env("quiet", 0), env("late", 0), env("late", 1)])
    assert kept == 5  # 3 busy (its bound), 1 quiet, then 1 late before the total bound
    assert q.dropped == {"busy": 3, "late": 1}
    assert [e.signal.ts for e in q.get_batch(10, 0) if e.source == "busy"] == [0.0, 1.0, 2.0]


def test_put_many_wakes_a_waiting_consumer() -> None:
    q = SignalQueue(100, 100)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(len(q.get_batch(100, timeout_s=5))))
    t.start()
    time.sleep(0.1)
    q.put_many([env("a", 1), env("b", 2)])
    t.join(timeout=5)
    assert got == [2]
