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
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import docker
from apscheduler.schedulers.background import BackgroundScheduler

from watcher.inventory import DEFAULT_SELECTOR, Inventory, WatchedContainer, shared_or_own
from watcher.model import Sample
from watcher.sources.base import Envelope, SignalQueue, Source

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
    """Every ``interval_s``, one stats read per running selected container, concurrently, into Samples.

    Which containers: the inventory's snapshot at the start of the round (no listing here).
    """

    name = "docker_stats"

    def __init__(
        self,
        queue: SignalQueue,
        engines: Mapping[str, Any] | None = None,
        label_selector: Sequence[str] = DEFAULT_SELECTOR,
        service_label: str = "watcher.service",
        interval_s: float = 5.0,
        workers: int = 8,
        inventory: Inventory | None = None,
    ) -> None:
        """``inventory``: the watcher's shared one; without it (``engines``, ``label_selector`` and
        ``service_label`` then describe it) the source keeps a private one."""
        super().__init__(queue)
        self.inventory, self._owns_inventory = shared_or_own(inventory, engines, label_selector, service_label)
        self.interval_s = interval_s
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._one_shot = True
        self._scheduler: BackgroundScheduler | None = None
        self.rounds = 0

    def start(self) -> None:
        if not self._claim_start():
            return
        if self._owns_inventory:
            self.inventory.start()
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
        if self._owns_inventory:
            self.inventory.stop()
        self.connected = False

    def collect_once(self) -> list[Sample]:
        """One round over every engine's running containers; returns what it queued."""
        pool = self._pool or ThreadPoolExecutor(max_workers=self.workers)
        errors = [
            state.error or f"{engine}: cannot list containers"
            for engine, state in self.inventory.engine_states().items()
            if not state.listed
        ]
        futures = [pool.submit(self._one, c) for c in self.inventory.snapshot().running()]
        samples: list[Sample] = []
        for fut in futures:
            try:
                samples.extend(fut.result(timeout=max(10.0, 2 * self.interval_s)))
            except Exception as exc:
                errors.append(f"stats: {exc}")
        if pool is not self._pool:
            pool.shutdown(wait=False)
        self.connected = all(state.listed for state in self.inventory.engine_states().values())
        if errors:
            self._error("; ".join(errors[:5]))
        self.queue.put_many(Envelope(s, f"docker_stats:{s.target.key if s.target else ''}", None) for s in samples)
        self.rounds += 1
        return samples

    def _stats(self, container: WatchedContainer) -> dict[str, Any]:
        api = self.inventory.client(container.engine).api
        if self._one_shot:
            try:
                result: dict[str, Any] = api.stats(container.id, stream=False, one_shot=True)
                return result
            except docker.errors.InvalidVersion:
                self._one_shot = False  # engine older than API 1.41
        result = api.stats(container.id, stream=False)
        return result

    def _one(self, container: WatchedContainer) -> list[Sample]:
        if self.stopping:
            return []
        stats = self._stats(container)
        ts = time.time()
        labels = {"name": container.name, "engine": container.engine, "id": container.id[:12]}
        return [
            Sample(series=series, ts=ts, value=value, target=container.target, labels=labels)
            for series, value in stats_to_values(stats).items()
        ]
