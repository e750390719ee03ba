"""Rule-defined PromQL queries, evaluated on a schedule, as Samples per target.

Prometheus being down or slow is a *reported condition*, never a crash and never a finding: a
failed query emits no samples (a detector must not read "no data" as "zero errors" or as a
spike), the source turns ``connected=False`` with ``last_error``, and retries back off
exponentially up to a cap so a struggling Prometheus is not hammered.

Staleness, as Prometheus itself defines it for a series that disappears: a series that was in an
earlier result and is absent from a successful one is emitted once with ``stale=True`` (its last
value), and so is a series not refreshed for ``stale_after_intervals`` intervals because its query
keeps failing. Detectors drop stale series instead of holding on to a last value that is no longer
true (a replica that was removed is not "still at 0.9 error ratio").
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from urllib3.util.retry import Retry

from watcher.model import Sample, Target
from watcher.retry import Backoff
from watcher.sources.base import Envelope, SignalQueue, Source


@dataclass(frozen=True, slots=True)
class PromQuery:
    """One query a rule asked for. ``target_label`` names the label that identifies the replica
    (the testbed's ``replica``, cAdvisor's ``name``, or ``instance`` with a ``resolve`` mapping)."""

    id: str
    expr: str
    target_label: str = "replica"
    service_label: str | None = None


Resolver = Callable[[PromQuery, Mapping[str, str]], Target | None]


@dataclass
class _Seen:
    value: float
    labels: dict[str, str]
    target: Target | None
    at: float  # wall time of the last successful refresh


class PrometheusSource(Source):
    name = "prometheus"

    def __init__(
        self,
        queue: SignalQueue,
        url: str,
        queries: Sequence[PromQuery],
        interval_s: float = 15.0,
        timeout_s: float = 5.0,
        stale_after_intervals: int = 3,
        backoff_cap_s: float = 120.0,
        engine: str = "local",
        resolve: Resolver | None = None,
    ) -> None:
        super().__init__(queue)
        ids = [q.id for q in queries]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate query ids: {sorted({i for i in ids if ids.count(i) > 1})}")
        self.url = url.rstrip("/")
        self.queries = list(queries)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.stale_after_intervals = stale_after_intervals
        self.engine = engine
        self.resolve = resolve or self._by_label
        self.backoff = Backoff(interval_s, max(interval_s, backoff_cap_s))
        session = requests.Session()
        session.trust_env = False  # never route to Prometheus through a proxy from the environment
        # No client-side retries: a failure is reported at once and the backoff decides when to retry.
        self.client = PrometheusConnect(url=self.url, session=session, retry=Retry(total=0), timeout=timeout_s)
        self.query_errors: dict[str, str] = {}
        self.failures = 0
        self._seen: dict[tuple[str, tuple[tuple[str, str], ...]], _Seen] = {}
        self._thread: threading.Thread | None = None

    def _by_label(self, query: PromQuery, labels: Mapping[str, str]) -> Target | None:
        container = labels.get(query.target_label)
        if not container:
            return None
        service = labels.get(query.service_label) if query.service_label else None
        return Target(container=container, engine=self.engine, service=service)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prometheus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        super().stop()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)
            self._thread = None
        self.client.close()

    def _run(self) -> None:
        while not self.stopping:
            ok = self.poll_once() is not None
            delay = self.interval_s if ok else self.backoff.next_delay()
            if ok:
                self.backoff.reset()
            if self._stop.wait(delay):
                return

    def poll_once(self, now: float | None = None) -> list[Sample] | None:
        """Evaluate every query once and queue the samples; None when every query failed."""
        now = time.time() if now is None else now
        out: list[Sample] = []
        succeeded = 0
        for query in self.queries:
            try:
                result = self.client.custom_query(query.expr, timeout=self.timeout_s)
            except Exception as exc:
                self.query_errors[query.id] = _describe(exc)
                continue
            succeeded += 1
            self.query_errors.pop(query.id, None)
            out.extend(self._fresh(query, result, now))
        out.extend(self._expire(now))
        all_failed = bool(self.queries) and succeeded == 0
        self.connected = not all_failed
        if self.query_errors:
            self._error("; ".join(f"{k}: {v}" for k, v in sorted(self.query_errors.items())))
            self.failures += 1
        else:
            self.last_error = None
        for s in out:
            self.queue.put(Envelope(s, f"prometheus:{s.series}", None))
        return None if all_failed else out

    def _fresh(self, query: PromQuery, result: Sequence[Mapping[str, Any]], now: float) -> list[Sample]:
        out: list[Sample] = []
        present: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for element in result:
            labels = {str(k): str(v) for k, v in (element.get("metric") or {}).items()}
            try:
                ts_raw, value_raw = element["value"]
                ts, value = float(ts_raw), float(value_raw)
            except (KeyError, TypeError, ValueError):
                continue  # a matrix or malformed element: not what an instant query returns
            key = (query.id, tuple(sorted(labels.items())))
            present.add(key)
            target = self.resolve(query, labels)
            self._seen[key] = _Seen(value, labels, target, now)
            if math.isnan(value):
                continue  # Prometheus' own NaN (0/0): no information, not a zero
            out.append(Sample(series=query.id, ts=ts, value=value, target=target, labels=labels))
        for key in [k for k in self._seen if k[0] == query.id and k not in present]:
            out.append(self._stale(key, now))
        return out

    def _expire(self, now: float) -> list[Sample]:
        limit = self.stale_after_intervals * self.interval_s
        return [self._stale(key, now) for key, seen in list(self._seen.items()) if now - seen.at > limit]

    def _stale(self, key: tuple[str, tuple[tuple[str, str], ...]], now: float) -> Sample:
        seen = self._seen.pop(key)
        return Sample(series=key[0], ts=now, value=seen.value, target=seen.target, labels=seen.labels, stale=True)

    def status(self) -> dict[str, Any]:
        s = super().status()
        s.update(url=self.url, query_errors=dict(self.query_errors), series=len(self._seen))
        return s


def _describe(exc: Exception) -> str:
    """Short, operator-facing: which kind of failure, not a 40-line urllib3 trace."""
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc):
        return "timeout: no answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or reset"
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."
