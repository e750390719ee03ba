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

**Read more often near the limit** (``near_interval_s``). A fleet at rest is read every
``interval_s``; a replica whose memory is at ``near_fraction`` of its limit or more is read every
``near_interval_s`` too, so a leak that fills the headroom in seconds gives the runway forecast the
points it needs in time. Where the watcher sees the containers' cgroup files
(:mod:`watcher.sources.cgroup_memory`) they replace the Docker call for every container, and the
near check reads every running container's usage file each near period (one small file each), so
a replica that crosses the line between two rounds is not missed; without them, the near check
reads (one-shot stats) only the replicas the last round found near.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from apscheduler.schedulers.background import BackgroundScheduler

from watcher.inventory import DEFAULT_SELECTOR, Inventory, WatchedContainer, shared_or_own
from watcher.model import Sample
from watcher.sources.base import Envelope, SignalQueue, Source
from watcher.sources.cgroup_memory import CgroupFiles, locate

SERIES = ("memory_working_set_bytes", "memory_usage_bytes", "memory_limit_bytes", "cpu_usage_seconds_total")
NEAR_FRACTION = 0.4
"""Read more often from here: above any healthy GC sawtooth the testbed makes (it peaks near 30 %),
and a 32 MB/s leak crosses it with more than half its runway (to 90 % of 256 MB) left."""


def is_near(memory_bytes: float, limit_bytes: float | None, fraction: float = NEAR_FRACTION) -> bool:
    """Whether a replica's memory is close enough to its limit to be read every near period."""
    return bool(limit_bytes) and memory_bytes >= fraction * float(limit_bytes or 0)


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
        near_interval_s: float = 0.0,
        near_fraction: float = NEAR_FRACTION,
        cgroup_root: Path | None = None,
    ) -> None:
        """``inventory``: the watcher's shared one; without it (``engines``, ``label_selector`` and
        ``service_label`` then describe it) the source keeps a private one. ``near_interval_s`` 0:
        no faster reads near the limit; ``cgroup_root`` None: Docker stats only."""
        super().__init__(queue)
        self.inventory, self._owns_inventory = shared_or_own(inventory, engines, label_selector, service_label)
        self.interval_s = interval_s
        self.workers = workers
        self.near_interval_s = near_interval_s
        self.near_fraction = near_fraction
        self.cgroup_root = cgroup_root
        self._pool: ThreadPoolExecutor | None = None
        self._one_shot = True
        self._scheduler: BackgroundScheduler | None = None
        self._lock = threading.Lock()
        self._cgroups: dict[str, CgroupFiles | None] = {}  # container id -> its files (None: not visible)
        self._last: dict[str, tuple[float, float | None]] = {}  # container id -> (working set, limit)
        self.rounds = 0
        self.near_rounds = 0
        self.near_reads = 0  # replicas read by the near check (each one sample set)

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
        if self.near_interval_s > 0:
            self._scheduler.add_job(
                self.near_once,
                "interval",
                seconds=self.near_interval_s,
                max_instances=1,
                coalesce=True,
                id="docker_stats_near",
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
        running = list(self.inventory.snapshot().running())
        ids = {c.id for c in running}
        with self._lock:  # a container gone (or stopped) takes its cgroup and last reading with it
            self._cgroups = {k: v for k, v in self._cgroups.items() if k in ids}
            self._last = {k: v for k, v in self._last.items() if k in ids}
        futures = [pool.submit(self._one, c) for c in running]
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
        self._enqueue(samples)
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

    def near_once(self) -> list[Sample]:
        """The near check: every replica at ``near_fraction`` of its limit or more, read again now."""
        if self.stopping:
            return []
        samples: list[Sample] = []
        for container in self.inventory.snapshot().running():
            files = self._files(container)
            with self._lock:
                last = self._last.get(container.id)
            if last is None:
                continue  # not read by a round yet: its limit is unknown
            try:
                memory = files.read_usage() if files is not None else last[0]
                if not is_near(memory, last[1], self.near_fraction):
                    continue
                samples.extend(self._one(container))
            except OSError:
                self._forget(container.id)
            except Exception as exc:  # one replica's failed read never stops the others'
                self._error(f"stats (near {container.name}): {exc}")
            self.near_reads += 1
        self._enqueue(samples)
        self.near_rounds += 1
        return samples

    def _enqueue(self, samples: list[Sample]) -> None:
        self.queue.put_many(Envelope(s, f"docker_stats:{s.target.key if s.target else ''}", None) for s in samples)

    def _files(self, container: WatchedContainer) -> CgroupFiles | None:
        if self.cgroup_root is None:
            return None
        with self._lock:
            if container.id in self._cgroups:
                return self._cgroups[container.id]
        files = locate(self.cgroup_root, container.id)
        with self._lock:
            self._cgroups[container.id] = files
        return files

    def _forget(self, container_id: str) -> None:
        """Its cgroup went away (stopped, or restarted into a new one): look again next time."""
        with self._lock:
            self._cgroups.pop(container_id, None)

    def _values(self, container: WatchedContainer) -> dict[str, float]:
        files = self._files(container)
        if files is not None:
            try:
                return files.read()
            except (OSError, ValueError):
                self._forget(container.id)
        return stats_to_values(self._stats(container))

    def _one(self, container: WatchedContainer) -> list[Sample]:
        if self.stopping:
            return []
        values = self._values(container)
        ts = time.time()
        if "memory_working_set_bytes" in values:
            with self._lock:
                self._last[container.id] = (values["memory_working_set_bytes"], values.get("memory_limit_bytes"))
        labels = {"name": container.name, "engine": container.engine, "id": container.id[:12]}
        return [
            Sample(series=series, ts=ts, value=value, target=container.target, labels=labels)
            for series, value in values.items()
        ]

    def status(self) -> dict[str, Any]:
        with self._lock:
            via_cgroup = sum(1 for f in self._cgroups.values() if f is not None)
            near = sum(1 for ws, limit in self._last.values() if is_near(ws, limit, self.near_fraction))
        return {
            **super().status(),
            "interval_s": self.interval_s,
            "near_interval_s": self.near_interval_s,
            "read_from_cgroup_files": via_cgroup,
            "near_limit": near,
        }
