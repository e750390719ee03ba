"""The decision thread: the engine never waits on a decision, and commands keep their place in line."""

from __future__ import annotations

import threading
import time

import pytest

from watcher.decisions import Decisions
from watcher.model import Finding, Predicts, Target


def finding(n: int, resolved: bool = False) -> Finding:
    return Finding(Target(f"tfs-{n}"), "rule", Predicts.OOM, float(n), resolved=resolved)


def test_submit_never_blocks_on_a_slow_decision_and_a_full_queue_drops_and_counts() -> None:
    gate = threading.Event()
    seen: list[Finding] = []

    def slow(f: Finding) -> None:
        gate.wait(10)
        seen.append(f)

    d = Decisions(slow, max_pending=3).start()
    started = time.monotonic()
    accepted = [d.submit(finding(i)) for i in range(10)]
    assert time.monotonic() - started < 1.0  # the engine thread went on at once
    assert accepted.count(False) == d.dropped and d.dropped >= 6
    gate.set()
    d.drain(10)
    assert [f.target.container for f in seen] == [f"tfs-{i}" for i, ok in enumerate(accepted) if ok]
    d.stop()


def test_commands_run_on_the_decision_thread_in_arrival_order_with_findings() -> None:
    order: list[str] = []
    threads: set[str] = set()

    def decide(f: Finding) -> None:
        threads.add(threading.current_thread().name)
        order.append(f"finding {f.target.container}{' resolved' if f.resolved else ''}")

    d = Decisions(decide).start()
    d.submit(finding(1))

    def pause() -> str:
        threads.add(threading.current_thread().name)
        order.append("pause")
        return "paused"

    assert d.call(pause) == "paused"
    d.submit(finding(1, resolved=True))
    d.drain()
    assert order == ["finding tfs-1", "pause", "finding tfs-1 resolved"]
    assert threads == {"decisions"}
    d.stop()


def test_a_failing_decision_is_counted_and_later_ones_still_run() -> None:
    seen: list[int] = []

    def decide(f: Finding) -> None:
        if f.ts == 1.0:
            raise RuntimeError("docker went away")
        seen.append(int(f.ts))

    d = Decisions(decide).start()
    for i in (1, 2, 3):
        d.submit(finding(i))
    d.drain()
    assert seen == [2, 3] and d.errors == 1 and d.alive
    d.stop()
    assert not d.alive


def test_a_command_error_reaches_the_caller_and_a_stuck_thread_times_out() -> None:
    gate = threading.Event()
    d = Decisions(lambda f: gate.wait(10)).start()

    def bad() -> None:
        raise ValueError("matchers: a non-empty object")

    with pytest.raises(ValueError, match="non-empty"):
        d.call(bad)
    d.submit(finding(1))  # the thread is now stuck in a decision
    with pytest.raises(TimeoutError):
        d.call(lambda: None, timeout_s=0.3)
    gate.set()
    d.stop()
    with pytest.raises(RuntimeError, match="not running"):
        d.call(lambda: None)


def test_stop_decides_what_was_queued_before_it() -> None:
    seen: list[int] = []
    d = Decisions(lambda f: seen.append(int(f.ts))).start()
    for i in range(50):
        d.submit(finding(i))
    d.stop()
    assert seen == list(range(50))


def test_the_tick_runs_when_idle_and_between_findings_and_a_failing_tick_is_counted() -> None:
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) == 1:
            raise RuntimeError("a bad tick")

    d = Decisions(lambda f: time.sleep(0.01), on_tick=tick, tick_s=0.05).start()
    try:
        time.sleep(0.3)  # idle: the thread wakes for its tick, not only for findings
        idle = len(ticks)
        assert idle >= 3 and d.errors == 1
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # a steady stream keeps the queue busy: ticks still come
            d.submit(finding(1))
            time.sleep(0.005)
        d.drain(10)
        assert len(ticks) >= idle + 3
    finally:
        d.stop()
