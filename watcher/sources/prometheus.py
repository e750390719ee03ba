"""Rule-defined PromQL queries, evaluated on a schedule, as Samples per target.

Prometheus being down or slow is a *reported condition*, never a crash and never a finding: a
failed query emits no samples (a detector must not read "no data" as "zero errors" or as a
spike), the source turns ``connected=False`` with ``last_error``, and retries back off
exponentially up to a cap so a struggling Prometheus is not hammered. While every query fails,
``unreachable_since`` says since when: the service raises a "watcher blind" alert on it.

Staleness, as Prometheus itself defines it for a series that disappears: a series that was in an
earlier result and is absent from a successful one is emitted once with ``stale=True`` (its last
value), and so is a series not refreshed for ``stale_after_intervals`` intervals because its query
keeps failing. Detectors drop stale series instead of holding on to a last value that is no longer
true (a replica that was removed is not "still at 0.9 error ratio").

Each query runs at its own ``interval_s`` (a PromQL rule's ``every``) or the source's interval.
A reload hands the source its new queries (:meth:`PrometheusSource.set_queries`): new ones run at
once, removed ones stop and their series are emitted stale.
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
from watcher.redact import redact_text, redact_url, url_secrets
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
    interval_s: float | None = None  # None: the source's interval


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
        self.url = url.rstrip("/")
        self.interval_s = interval_s
        self._queries_lock = threading.Lock()
        self._due: dict[str, float] = {}  # query id -> monotonic time it runs next
        self._wake = threading.Event()  # set by stop() and by set_queries()
        self.query_errors: dict[str, str] = {}
        self.queries: list[PromQuery] = []
        self.set_queries(queries)
        self.timeout_s = timeout_s
        self.stale_after_intervals = stale_after_intervals
        self.engine = engine
        self.resolve = resolve or self._by_label
        self.backoff = Backoff(interval_s, max(interval_s, backoff_cap_s))
        session = requests.Session()
        session.trust_env = False  # never route to Prometheus through a proxy from the environment
        # No client-side retries: a failure is reported at once and the backoff decides when to retry.
        self.client = PrometheusConnect(url=self.url, session=session, retry=Retry(total=0), timeout=timeout_s)
        self.failures = 0
        # wall time of the first poll of the current run of polls in which every query failed:
        # the watcher is blind to Prometheus' series since then (the service alerts on it)
        self.unreachable_since: float | None = None
        self._seen: dict[tuple[str, tuple[tuple[str, str], ...]], _Seen] = {}
        self._thread: threading.Thread | None = None

    def _by_label(self, query: PromQuery, labels: Mapping[str, str]) -> Target | None:
        container = labels.get(query.target_label)
        if not container:
            return None
        service = labels.get(query.service_label) if query.service_label else None
        return Target(container=container, engine=self.engine, service=service)

    def start(self) -> None:
        if not self._claim_start():
            return
        self._thread = threading.Thread(target=self._run, name="prometheus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        super().stop()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)
            self._thread = None
        self.client.close()

    def set_queries(self, queries: Sequence[PromQuery]) -> None:
        """Replace the queries (a reload); new or changed ones run at the next wake-up."""
        ids = [q.id for q in queries]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate query ids: {sorted({i for i in ids if ids.count(i) > 1})}")
        with self._queries_lock:
            before = {q.id: q for q in self.queries}
            self.queries = list(queries)
            self._due = {q.id: self._due.get(q.id, 0.0) if before.get(q.id) == q else 0.0 for q in self.queries}
            for gone in set(before) - set(self._due):
                self.query_errors.pop(gone, None)
        self._wake.set()

    def interval_of(self, query: PromQuery) -> float:
        return query.interval_s if query.interval_s is not None else self.interval_s

    def _run(self) -> None:
        while not self.stopping:
            self._wake.clear()
            started = time.monotonic()
            with self._queries_lock:
                due = [q for q in self.queries if self._due.get(q.id, 0.0) <= started]
            if due:
                ok = self.poll_once(queries=due) is not None
            else:  # woken by a reload that only removed queries: their series go stale now
                ok = True
                self._emit(self._expire(time.time()))
            with self._queries_lock:
                for q in due:
                    if q.id in self._due:
                        self._due[q.id] = started + self.interval_of(q)
                nearest = min(self._due.values(), default=started + self.interval_s)
            delay = max(0.0, nearest - time.monotonic()) if ok else self.backoff.next_delay()
            if ok:
                self.backoff.reset()
            self._wake.wait(delay)

    def poll_once(self, now: float | None = None, queries: Sequence[PromQuery] | None = None) -> list[Sample] | None:
        """Evaluate ``queries`` (default: every query) once and queue the samples; None when every
        one failed."""
        now = time.time() if now is None else now
        if queries is None:
            with self._queries_lock:
                queries = list(self.queries)
        out: list[Sample] = []
        succeeded = 0
        for query in queries:
            try:
                result = self.client.custom_query(query.expr, timeout=self.timeout_s)
            except Exception as exc:
                self.query_errors[query.id] = redact_text(_describe(exc), url_secrets(self.url))
                continue
            succeeded += 1
            self.query_errors.pop(query.id, None)
            out.extend(self._fresh(query, result, now))
        out.extend(self._expire(now))
        all_failed = bool(queries) and succeeded == 0
        self.connected = not all_failed
        if all_failed:
            if self.unreachable_since is None:
                self.unreachable_since = now
        elif queries:
            self.unreachable_since = None
        if self.query_errors:
            self._error("; ".join(f"{k}: {v}" for k, v in sorted(self.query_errors.items())))
            self.failures += 1
        else:
            self.last_error = None
        self._emit(out)
        return None if all_failed else out

    def _emit(self, samples: Sequence[Sample]) -> None:
        self.queue.put_many(Envelope(s, f"prometheus:{s.series}", None) for s in samples)

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
        """Series not refreshed for ``stale_after_intervals`` of their query's interval, and every
        series of a query a reload removed."""
        with self._queries_lock:
            limits = {q.id: self.stale_after_intervals * self.interval_of(q) for q in self.queries}
        return [
            self._stale(key, now)
            for key, seen in list(self._seen.items())
            if key[0] not in limits or now - seen.at > limits[key[0]]
        ]

    def _stale(self, key: tuple[str, tuple[tuple[str, str], ...]], now: float) -> Sample:
        seen = self._seen.pop(key)
        return Sample(series=key[0], ts=now, value=seen.value, target=seen.target, labels=seen.labels, stale=True)

    def status(self) -> dict[str, Any]:
        s = super().status()
        s.update(
            url=redact_url(self.url),
            query_errors=dict(self.query_errors),
            series=len(self._seen),
            unreachable_since=self.unreachable_since,
        )
        return s


def _describe(exc: Exception) -> str:
    """Short, operator-facing: which kind of failure, not a 40-line urllib3 trace."""
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc):
        return "timeout: no answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or reset"
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."
