"""The one backoff: the retried-call schedule and the reconnect-loop counter are the same formula."""

from __future__ import annotations

import pytest

from watcher.retry import Backoff, RetryableError, with_retries


def test_schedule_doubles_up_to_the_cap_for_calls_and_loops_alike() -> None:
    b = Backoff(base_s=0.5, cap_s=4.0, attempts=6)
    assert b.delays() == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [b.next_delay() for _ in range(5)] == b.delays()
    assert b.delays() == [0.5, 1.0, 2.0, 4.0, 4.0]  # the loop counter does not change a call's schedule


def test_with_retries_raises_the_callers_error_after_the_last_attempt() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 5:
            raise RetryableError(f"try {len(calls)}")
        return 7

    with pytest.raises(LookupError, match=r"^post: gave up after 3 attempts; last error: try 3$"):
        with_retries(flaky, Backoff(0.1, 1.0, attempts=3), "post", give_up=LookupError, sleep=waits.append)
    assert waits == [0.1, 0.2]
    assert with_retries(flaky, Backoff(0.1, 1.0, attempts=3), "post", give_up=LookupError, sleep=waits.append) == 7
