"""Container resource usage from the Docker stats API, sampled on a schedule.

Memory is reported as cAdvisor and ``docker stats`` do: the *working set* (usage minus inactive
page cache) is what the kernel's OOM killer weighs against the limit, while raw usage includes
cache the kernel would drop first; forecasting raw usage would predict OOMs that never come.

``container.stats(stream=False)`` blocks for about one CPU sampling period (1-2 s): it waits for a
second CPU reading to fill ``precpu_stats``, which this source never uses (it reports the cumulative
CPU counter). So it asks for ``one_shot`` (API 1.41+), which answers from the daemon's latest
reading (at most about 1 s old, often at once), and falls back on older engines. Each
round fans out over a small thread pool and the scheduler never overlaps rounds (``max_instances=1``,
coalesced): a slow engine delays samples, it does not pile up threads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import docker
from apscheduler.schedulers.background import BackgroundScheduler

from watcher.model import Sample, Target
from watcher.sources.base import Envelope, SignalQueue, Source
from watcher.sources.docker_logs import DEFAULT_SELECTOR, make_clients

SERIES = ("memory_working_set_bytes", "memory_usage_bytes", "memory_limit_bytes", "cpu_usage_seconds_total")


def stats_to_values(stats: Mapping[str, Any]) -> dict[str, float]:
    """The series this source reports, from one Docker stats document (cgroup v1 or v2)."""
    out: dict[str, float] = {}
    mem = stats.get("memory_stats") or {}
    usage = mem.get("usage")
    if usage is not None:
        detail = mem.get("stats") or {}
        # cgroup v1 names it total_inactive_file, v2 inactive_file; docker stats uses the same rule.
        inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
        out["memory_usage_bytes"] = float(usage)
        out["memory_working_set_bytes"] = float(max(0, int(usage) - int(inactive or 0)))
    limit = mem.get("limit")
    if limit:
        out["memory_limit_bytes"] = float(limit)
    total = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    if total is not None:
        out["cpu_usage_seconds_total"] = float(total) / 1e9
    return out


class DockerStatsSource(Source):
    """Every ``interval_s``, one stats read per selected container, concurrently, into Samples."""

    name = "docker_stats"

    def __init__(
        self,
        queue: SignalQueue,
        engines: Mapping[str, Any] | None = None,
        label_selector: Sequence[str] = DEFAULT_SELECTOR,
        service_label: str = "watcher.service",
        interval_s: float = 5.0,
        workers: int = 8,
    ) -> None:
        super().__init__(queue)
        self.clients = make_clients(engines)
        self.label_selector = list(label_selector)
        self.service_label = service_label
        self.interval_s = interval_s
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._one_shot = True
        self._scheduler: BackgroundScheduler | None = None
        self.rounds = 0

    def start(self) -> None:
        if not self._claim_start():
            return
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="stats")
        self._scheduler = BackgroundScheduler(daemon=True)
        self._scheduler.add_job(
            self.collect_once,
            "interval",
            seconds=self.interval_s,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),  # first round at once, then every interval
            id="docker_stats",
        )
        self._scheduler.start()

    def stop(self) -> None:
        super().stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.connected = False

    def collect_once(self) -> list[Sample]:
        """One round over every engine; returns what it queued (tests call this directly)."""
        pool = self._pool or ThreadPoolExecutor(max_workers=self.workers)
        futures: list[Future[list[Sample]]] = []
        errors: list[str] = []
        for engine, client in self.clients.items():
            try:
                containers = client.containers.list(filters={"label": self.label_selector})
            except Exception as exc:
                errors.append(f"{engine}: cannot list containers: {exc}")
                continue
            futures.extend(pool.submit(self._one, engine, c) for c in containers)
        samples: list[Sample] = []
        for fut in futures:
            try:
                samples.extend(fut.result(timeout=max(10.0, 2 * self.interval_s)))
            except Exception as exc:
                errors.append(f"stats: {exc}")
        if pool is not self._pool:
            pool.shutdown(wait=False)
        self.connected = not any("cannot list" in e for e in errors)
        if errors:
            self._error("; ".join(errors[:5]))
        for s in samples:
            assert s.target is not None
            self.queue.put(Envelope(s, f"docker_stats:{s.target.key}", None))
        self.rounds += 1
        return samples

    def _stats(self, container: Any) -> dict[str, Any]:
        if self._one_shot:
            try:
                result: dict[str, Any] = container.stats(stream=False, one_shot=True)
                return result
            except docker.errors.InvalidVersion:
                self._one_shot = False  # engine older than API 1.41
        result = container.stats(stream=False)
        return result

    def _one(self, engine: str, container: Any) -> list[Sample]:
        if self.stopping:
            return []
        stats = self._stats(container)
        labels = container.labels or {}
        target = Target(container=container.name, engine=engine, service=labels.get(self.service_label))
        ts = time.time()
        sample_labels = {"name": container.name, "engine": engine, "id": container.id[:12]}
        return [
            Sample(series=series, ts=ts, value=value, target=target, labels=sample_labels)
            for series, value in stats_to_values(stats).items()
        ]
