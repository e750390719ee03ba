"""A container's memory (and CPU counter) read from its cgroup files, where the watcher can see them.

Docker's stats API answers from the daemon's last reading, once a second at best, and each call is
an HTTP round trip the engine serves: fine every 5 s for a fleet at rest, too slow and too dear
every second for a fleet. A leak of 32 MB/s fills a 256 MB limit in about 7 s, so a replica near its
limit must be read more often than that, and the kernel's own counters are the cheapest and
freshest reading there is: one small file per series, no daemon in the way.

They are readable where the watcher runs on the host, or in a container given the host's cgroup
tree read-only (``/sys/fs/cgroup:/host/cgroup:ro`` and ``cgroup_root: /host/cgroup``); anywhere
else :func:`locate` finds nothing and the caller keeps using Docker stats.

Both layouts are read: cgroup v1 (``memory/<parent>/<id>/memory.usage_in_bytes``, ``memory.stat``'s
``total_inactive_file``, ``cpuacct.usage``) and v2 (``<parent>/<id>/memory.current``,
``inactive_file``, ``cpu.stat``'s ``usage_usec``), under Docker's cgroupfs parent (``docker``, or
the container's own ``--cgroup-parent``) or systemd's ``system.slice/docker-<id>.scope``. The values
are those :func:`watcher.sources.docker_stats.stats_to_values` makes from a stats document (working
set = usage minus inactive file), so a series never changes meaning with its source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNLIMITED = 2**62  # v1 writes "no limit" as a page-rounded 2**63-1; anything this large is no limit


@dataclass(frozen=True, slots=True)
class CgroupFiles:
    """Where one container's counters are."""

    usage: Path
    limit: Path
    stat: Path
    cpu: Path | None
    v2: bool

    def read_usage(self) -> float:
        """The one file the near-the-limit check reads every period: raw usage, bytes."""
        return float(self.usage.read_text().strip())

    def read(self) -> dict[str, float]:
        """The series Docker stats gives (``memory_working_set_bytes``, ``memory_usage_bytes``,
        ``memory_limit_bytes``, ``cpu_usage_seconds_total``). Raises OSError when the
        cgroup is gone (the container stopped): the caller forgets it."""
        usage = self.read_usage()
        inactive_key = "inactive_file" if self.v2 else "total_inactive_file"
        inactive = 0.0
        for line in self.stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == inactive_key:
                inactive = float(value)
                break
        out = {"memory_usage_bytes": usage, "memory_working_set_bytes": max(0.0, usage - inactive)}
        raw = self.limit.read_text().strip()
        limit = float(raw) if raw != "max" else float(UNLIMITED)
        # no limit: the host's memory is the one the kernel enforces, as Docker stats reports it
        out["memory_limit_bytes"] = limit if limit < UNLIMITED else host_memory()
        if self.cpu is not None:
            text = self.cpu.read_text()
            if self.v2:
                for line in text.splitlines():
                    name, _, value = line.partition(" ")
                    if name == "usage_usec":
                        out["cpu_usage_seconds_total"] = float(value) / 1e6
                        break
            else:
                out["cpu_usage_seconds_total"] = float(text.strip()) / 1e9
        return out


def host_memory() -> float:
    """MemTotal, bytes (what Docker stats reports as the limit of an unlimited container)."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return float(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemTotal")


def locate(root: Path, container_id: str, cgroup_parent: str = "") -> CgroupFiles | None:
    """The container's cgroup files under ``root`` (the host's ``/sys/fs/cgroup``), or None when
    this watcher cannot see them. Only fixed, known places: the id comes from Docker, never a glob."""
    if not container_id.isalnum():
        return None
    parents = [p for p in dict.fromkeys((cgroup_parent.strip("/"), "docker")) if p and ".." not in p.split("/")]
    v1 = [root / "memory" / p / container_id for p in parents]
    v2 = [root / p / container_id for p in parents] + [root / "system.slice" / f"docker-{container_id}.scope"]
    v2 += [root / "unified" / p / container_id for p in parents]
    for path in v1:
        if (path / "memory.usage_in_bytes").is_file():
            cpu = root / "cpuacct" / path.relative_to(root / "memory") / "cpuacct.usage"
            return CgroupFiles(
                path / "memory.usage_in_bytes",
                path / "memory.limit_in_bytes",
                path / "memory.stat",
                cpu if cpu.is_file() else None,
                v2=False,
            )
    for path in v2:
        if (path / "memory.current").is_file():
            cpu = path / "cpu.stat"
            return CgroupFiles(
                path / "memory.current", path / "memory.max", path / "memory.stat", cpu if cpu.is_file() else None, True
            )
    return None
