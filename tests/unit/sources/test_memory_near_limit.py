"""Memory read more often near the limit (issue #17): the cgroup files (v1 and v2, as the kernel
lays them out) and the Docker stats fallback, the near check's choice of replicas, and the
decision boundary it buys the shipped runway: at every rate of the sweep, read the way the source
reads with the shipped settings (every 5 s at rest, every 0.5 s from 40 % of the limit), a leak is found within half the
time it takes to reach the limit, while a GC sawtooth below the line is never read faster."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.unit.detectors.test_forecast_urgent import BASE, LIMIT, MB, RATES, _feed, _shipped
from tests.unit.sources.test_probes import FakeInventory, replica
from watcher.sources.base import SignalQueue
from watcher.sources.cgroup_memory import locate
from watcher.sources.docker_stats import NEAR_FRACTION, DockerStatsSource, is_near

CID = "ab12" * 16  # a 64-hex container id
SHIPPED = yaml.safe_load((Path(__file__).resolve().parents[3] / "deploy" / "watcher.yaml").read_text())
BASE_S, NEAR_S = float(SHIPPED["stats_interval_s"]), float(SHIPPED["memory_near_interval_s"])


def _v1(root: Path, cid: str = CID, usage: int = 100 * 2**20, inactive: int = 10 * 2**20, limit: int = 2**28) -> Path:
    mem = root / "memory" / "docker" / cid
    mem.mkdir(parents=True)
    (mem / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (mem / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (mem / "memory.stat").write_text(f"cache 123\nrss 456\ninactive_file 7\ntotal_inactive_file {inactive}\n")
    cpu = root / "cpuacct" / "docker" / cid
    cpu.mkdir(parents=True)
    (cpu / "cpuacct.usage").write_text("2500000000\n")
    return mem


def _v2(root: Path, cid: str = CID, usage: int = 100 * 2**20, limit: str = str(2**28)) -> Path:
    path = root / "system.slice" / f"docker-{cid}.scope"
    path.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (path / "memory.current").write_text(f"{usage}\n")
    (path / "memory.max").write_text(f"{limit}\n")
    (path / "memory.stat").write_text("anon 1\nfile 2\nactive_file 3\ninactive_file 10485760\n")
    (path / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1\n")
    return path


def test_cgroup_v1_files_give_the_series_docker_stats_gives(tmp_path: Path) -> None:
    _v1(tmp_path)
    files = locate(tmp_path, CID)
    assert files is not None and not files.v2
    assert files.read() == {
        "memory_usage_bytes": 100 * MB,
        "memory_working_set_bytes": 90 * MB,  # usage minus total_inactive_file, as docker stats
        "memory_limit_bytes": 256 * MB,
        "cpu_usage_seconds_total": 2.5,
    }


def test_cgroup_v2_files_under_systemd_and_no_limit_is_the_hosts_memory(tmp_path: Path) -> None:
    _v2(tmp_path, limit="max")
    files = locate(tmp_path, CID)
    assert files is not None and files.v2
    values = files.read()
    assert values["memory_working_set_bytes"] == 90 * MB and values["cpu_usage_seconds_total"] == 1.5
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
    assert values["memory_limit_bytes"] == float(meminfo[1]) * 1024


def test_a_container_whose_files_are_not_visible_or_a_strange_id_is_not_located(tmp_path: Path) -> None:
    _v1(tmp_path)
    assert locate(tmp_path, "cd34" * 16) is None
    assert locate(tmp_path, "../../etc") is None
    assert locate(tmp_path, CID, cgroup_parent="../x") is not None  # the bad parent is ignored, docker/ found


def test_a_custom_cgroup_parent_is_looked_in(tmp_path: Path) -> None:
    mem = _v1(tmp_path)
    moved = tmp_path / "memory" / "fleet" / "engine-b" / CID
    moved.parent.mkdir(parents=True)
    mem.rename(moved)
    files = locate(tmp_path, CID, cgroup_parent="/fleet/engine-b")
    assert files is not None and files.usage == moved / "memory.usage_in_bytes"
    assert files.cpu is None  # no cpuacct there: memory only


class FakeApi:
    """Docker's stats call, counted, answering the working set set per container id."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.ws: dict[str, int] = {}

    def stats(self, cid: str, stream: bool = False, one_shot: bool = False) -> dict[str, Any]:
        self.calls.append(cid)
        usage = self.ws.get(cid, 50 * 2**20)
        return {"memory_stats": {"usage": usage, "limit": 2**28, "stats": {"inactive_file": 0}}}


class Engines(FakeInventory):
    def __init__(self, containers: list[Any], api: FakeApi) -> None:
        super().__init__(containers)
        self.api = api

    def client(self, engine: str) -> Any:
        return self


def _source(tmp_path: Path, containers: list[Any], cgroups: bool) -> tuple[DockerStatsSource, FakeApi]:
    api = FakeApi()
    source = DockerStatsSource(
        SignalQueue(),
        inventory=Engines(containers, api),  # type: ignore[arg-type]
        near_interval_s=1.0,
        cgroup_root=tmp_path if cgroups else None,
    )
    return source, api


def _containers(*ids: str) -> list[Any]:
    return [replace(replica(f"tfs-{i}", f"127.0.0.1:{9000 + i}"), id=cid) for i, cid in enumerate(ids)]


def test_with_cgroup_files_docker_is_not_called_and_a_crossing_between_rounds_is_read_at_once(tmp_path: Path) -> None:
    quiet, leaking = "11" * 32, "22" * 32
    _v1(tmp_path, quiet, usage=60 * 2**20)
    _v1(tmp_path, leaking, usage=60 * 2**20)
    source, api = _source(tmp_path, _containers(quiet, leaking), cgroups=True)
    assert len(source.collect_once()) == 8  # four series each, from the files
    assert source.near_once() == []  # both at 23 %: the fleet at rest is read every round only
    (tmp_path / "memory" / "docker" / leaking / "memory.usage_in_bytes").write_text(f"{120 * 2**20}\n")
    near = source.near_once()  # crossed 40 % since the round: read now, not at the next round
    assert {s.target.container for s in near if s.target} == {"tfs-1"}
    assert {s.series: s.value for s in near}["memory_working_set_bytes"] == 110 * MB
    assert api.calls == []
    assert source.status()["read_from_cgroup_files"] == 2 and source.status()["near_limit"] == 1


def test_without_cgroup_files_the_near_check_asks_docker_only_for_the_replicas_near_their_limit(tmp_path: Path) -> None:
    quiet, leaking = "11" * 32, "22" * 32
    source, api = _source(tmp_path, _containers(quiet, leaking), cgroups=True)  # root has no files for them
    api.ws[leaking] = 150 * 2**20
    source.collect_once()
    assert sorted(api.calls) == sorted([quiet, leaking])
    api.calls.clear()
    near = source.near_once()
    assert api.calls == [leaking]  # one one-shot stats call, for the replica at 59 % of its limit
    assert {s.target.container for s in near if s.target} == {"tfs-1"}


def test_a_container_whose_cgroup_went_away_falls_back_to_docker(tmp_path: Path) -> None:
    mem = _v1(tmp_path, usage=200 * 2**20)
    source, api = _source(tmp_path, _containers(CID), cgroups=True)
    source.collect_once()
    assert api.calls == []
    for f in mem.iterdir():
        f.unlink()
    mem.rmdir()
    assert source.near_once() == []  # gone: forgotten, looked for again
    source.collect_once()
    assert api.calls == [CID]


def test_the_near_line_is_above_the_testbeds_sawtooths_and_below_a_fast_leaks_half_time() -> None:
    assert not is_near(100 * MB, LIMIT)  # healthy-noise-fast peaks near 70 MB in the testbed, 100 MB here
    assert is_near(NEAR_FRACTION * LIMIT, LIMIT) and not is_near(1e12, None)


def _policy_first_finding(rate_mb: float, phase: float, base_s: float = BASE_S, near_s: float = NEAR_S) -> float | None:
    """The shipped runway fed as the source reads: a round every ``base_s``, and every ``near_s``
    a reading of each replica at the near line or above; the leak starts ``phase`` seconds after a
    round, after a minute at rest. Seconds from the leak's start to the first finding (None: the
    limit came first)."""
    d = _shipped()
    rng = np.random.default_rng(int(rate_mb * 100 + phase * 10))
    start, step = 60.0 + phase, 0.1
    for i in range(int((start + 300) / step)):
        t = round(i * step, 6)
        value = BASE + max(0.0, t - start) * rate_mb * MB
        if value >= LIMIT:
            return None
        on_round = i % round(base_s / step) == 0
        on_near = i % round(near_s / step) == 0 and is_near(value, LIMIT)
        if (on_round or on_near) and _feed(d, t, value + float(rng.normal(0, 0.5 * MB))) and t > start:
            return t - start
    return None


@pytest.mark.parametrize("rate", RATES)
def test_at_every_rate_of_the_sweep_the_leak_is_found_within_half_its_time_to_the_limit(rate: float) -> None:
    to_limit = (LIMIT - BASE) / (rate * MB)
    for phase in (0.0, 1.3, 2.6, 3.9, 4.9):
        found = _policy_first_finding(rate, phase)
        assert found is not None, (rate, phase)
        assert found <= to_limit / 2, (rate, phase, found, to_limit)


def test_the_fast_sawtooth_read_as_the_source_reads_never_fires_the_shipped_runway() -> None:
    """healthy-noise-fast's own sawtooth (its parameters, ten minutes, five phases), read by the
    same policy: it stays under the near line, so it is read every round and never fires."""
    from benchmarks.chaos import SCENARIOS

    saw = SCENARIOS["healthy-noise-fast"].params["sawtooth"]
    rate, cap, period, on_s = (
        float(saw[k]) * m for k, m in (("mb_per_s", MB), ("max_mb", MB), ("period_s", 1), ("on_s", 1))
    )
    rng = np.random.default_rng(11)
    step = 0.1
    for phase in (0.0, 0.5, 1.9, 2.5, 6.0):
        d = _shipped()
        for i in range(int(SCENARIOS["healthy-noise-fast"].seconds / step)):
            t = round(i * step, 6)
            u = (t + phase) % period
            value = BASE + (min(u * rate, cap) if u < on_s else 0.0) + float(rng.normal(0, 1 * MB))
            on_near = i % round(NEAR_S / step) == 0 and is_near(value, LIMIT)
            if i % round(BASE_S / step) == 0 or on_near:
                assert not _feed(d, t, value), (phase, t, value / MB)
