"""Sources against a real Docker engine and the testbed's real Prometheus."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from testbed.images import ensure_images
from testbed.ports import free_ports
from testbed.replicas import TESTBED_LABEL, remove_testbed_containers
from testbed.stack import Testbed, TestbedConfig
from watcher.model import Lifecycle, LifecycleKind, LogRecord, Sample, Target
from watcher.sources.base import Envelope, SignalQueue
from watcher.sources.cgroup_memory import locate
from watcher.sources.docker_events import DockerEventsSource
from watcher.sources.docker_logs import DockerLogsSource
from watcher.sources.docker_stats import DockerStatsSource, stats_to_values
from watcher.sources.prometheus import PrometheusSource, PromQuery
from watcher.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture
def run_id(docker_client: docker.DockerClient) -> Iterator[str]:
    rid = "src-" + uuid.uuid4().hex[:8]
    yield rid
    remove_testbed_containers(docker_client, rid)


def sim_image(client: docker.DockerClient) -> str:
    return str(ensure_images(client)["simulator"].tag)


def run_py(client: docker.DockerClient, run_id: str, name: str, code: str, watched: bool = True, **kw: Any) -> Any:
    labels = {TESTBED_LABEL: run_id}
    if watched:
        labels |= {"watcher.enable": "true", "watcher.service": "svc"}
    return client.containers.run(
        sim_image(client),
        entrypoint=["python3", "-u", "-c", code],
        command=[],
        name=f"{run_id}-{name}",
        labels=labels,
        network_mode="host",
        detach=True,
        **kw,
    )


class Consumer:
    """Stands in for the engine: processes batches, then commits their cursors."""

    def __init__(self, queue: SignalQueue, store: Store) -> None:
        self.queue, self.store = queue, store
        self.records: list[LogRecord] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch: list[Envelope] = self.queue.get_batch(1024, 0.1)
            self.records.extend(e.signal for e in batch if isinstance(e.signal, LogRecord))
            self.store.set_cursors(dict(e.cursor for e in batch if e.cursor is not None))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def messages(self, container: str | None = None) -> list[str]:
        return [r.message for r in list(self.records) if container is None or r.target.container == container]

    def wait_for(self, pred: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.05)
        raise TimeoutError(f"condition not met; have {len(self.records)} records")


def selector(run_id: str) -> list[str]:
    # Only this test's containers, whatever else runs on the engine with watcher.enable=true.
    return ["watcher.enable=true", f"{TESTBED_LABEL}={run_id}"]


def test_follows_labelled_containers_only_with_both_streams(
    docker_client: docker.DockerClient, run_id: str, tmp_path: Path
) -> None:
    code = (
        "import sys,time\n"
        "print('out line'); print('err line', file=sys.stderr); print('x'*20000)\n"
        "sys.stdout.write('no newline at end'); sys.stdout.flush(); time.sleep(60)"
    )
    watched = run_py(docker_client, run_id, "watched", code)
    run_py(docker_client, run_id, "ignored", code, watched=False)
    queue, store = SignalQueue(1000, 10_000), Store(tmp_path / "s.db")
    src = DockerLogsSource(queue, store, label_selector=selector(run_id), backfill_s=None, rescan_s=1.0)
    consumer = Consumer(queue, store)
    src.start()
    try:
        consumer.wait_for(lambda: len(consumer.records) >= 3, 15)
        assert src.connected and src.followed() == {f"local/{watched.name}": watched.id}
        time.sleep(0.5)
        by_msg = {r.message[:20]: r for r in consumer.records}
        assert {r.target.container for r in consumer.records} == {watched.name}
        assert by_msg["out line"].fields == {"stream": "stdout"}
        assert by_msg["err line"].fields == {"stream": "stderr"}
        long = by_msg["x" * 20]
        assert len(long.message) == 16 * 1024 and long.fields["truncated"] == "1"
        assert long.target.service == "svc" and long.target.engine == "local"
        assert abs(long.ts - time.time()) < 30
    finally:
        src.stop()
        consumer.stop()


def test_watcher_restart_mid_stream_loses_and_repeats_nothing(
    docker_client: docker.DockerClient, run_id: str, tmp_path: Path
) -> None:
    n = 30_000
    # Bursts of 100 lines per write, so many lines share a millisecond and some a timestamp.
    code = (
        "import sys,time\n"
        f"for b in range(0, {n}, 100):\n"
        "    sys.stdout.write(''.join(f'line {i}\\n' for i in range(b, b + 100))); sys.stdout.flush()\n"
        "    time.sleep(0.01)\n"
        "time.sleep(60)"
    )
    c = run_py(docker_client, run_id, "counter", code)
    store = Store(tmp_path / "s.db")
    kept: list[str] = []
    for phase in range(3):  # two restarts of the watcher's source while the container writes
        queue = SignalQueue(100_000, 200_000)
        consumer = Consumer(queue, store)
        src = DockerLogsSource(queue, store, label_selector=selector(run_id), backfill_s=None)
        src.start()
        if phase < 2:
            consumer.wait_for(lambda c=consumer: len(c.records) > 2000, 20)
            src.stop()  # lines read but not yet processed are lost here: their cursors were not committed
            consumer.stop()
        else:
            before = len(kept)
            consumer.wait_for(lambda b=before, c=consumer: b + len(c.records) >= n, 40)
            time.sleep(0.5)
            src.stop()
            consumer.stop()
        kept.extend(consumer.messages(c.name))
    counts = Counter(kept)
    assert len(kept) == n and set(counts) == {f"line {i}" for i in range(n)}, (len(kept), len(counts))
    assert kept == [f"line {i}" for i in range(n)]  # and in order


def test_reattaches_across_docker_restart(docker_client: docker.DockerClient, run_id: str, tmp_path: Path) -> None:
    code = "import time,os\nfor i in range(50): print('run', i)\ntime.sleep(120)"
    c = run_py(docker_client, run_id, "restarts", code)
    queue, store = SignalQueue(1000, 10_000), Store(tmp_path / "s.db")
    consumer = Consumer(queue, store)
    src = DockerLogsSource(queue, store, label_selector=selector(run_id), backfill_s=None, rescan_s=30)
    src.start()
    try:
        consumer.wait_for(lambda: len(consumer.messages(c.name)) >= 50, 15)
        c.restart(timeout=1)
        consumer.wait_for(lambda: len(consumer.messages(c.name)) >= 100, 15)
        time.sleep(0.5)
        assert consumer.messages(c.name) == [f"run {i}" for i in range(50)] * 2
        # Re-created under the same name (new ID): the name-keyed cursor carries on, no replay.
        c.remove(force=True)
        c2 = run_py(docker_client, run_id, "restarts", code)
        consumer.wait_for(lambda: len(consumer.messages(c.name)) >= 150, 15)
        time.sleep(0.5)
        assert consumer.messages(c.name) == [f"run {i}" for i in range(50)] * 3
        assert src.followed() == {f"local/{c2.name}": c2.id}
    finally:
        src.stop()
        consumer.stop()


def test_single_stream_throughput(docker_client: docker.DockerClient, run_id: str, tmp_path: Path) -> None:
    n = 200_000
    code = (
        "import sys,time\n"
        f"sys.stdout.write(''.join(f'2024-05-01 10:00:00.000000: I tensorflow_serving/x.cc:1] request {{i}}\\n' "
        f"for i in range({n}))); sys.stdout.flush(); time.sleep(60)"
    )
    c = run_py(docker_client, run_id, "flood", code)
    time.sleep(3)  # let Docker write it all to its log file first: measure the reader, not the writer
    queue, store = SignalQueue(n + 10, n + 10), Store(tmp_path / "s.db")
    consumer = Consumer(queue, store)
    src = DockerLogsSource(queue, store, label_selector=selector(run_id), backfill_s=None)
    t = time.monotonic()
    src.start()
    try:
        consumer.wait_for(lambda: len(consumer.records) >= n, 60)
        rate = n / (time.monotonic() - t)
    finally:
        src.stop()
        consumer.stop()
    print(f"\nsingle container stream: {rate:,.0f} lines/s into the queue (incl. consumer + cursor commits)")
    assert consumer.messages(c.name)[-1].endswith(f"request {n - 1}")
    assert rate > 5000


# -- events, stats and Prometheus against one testbed replica (OOM last: it ends the replica's run) --
@pytest.fixture(scope="module")
def bed(docker_client: docker.DockerClient) -> Iterator[Testbed]:
    cfg = TestbedConfig(replicas=1, weights=(1,), memory_limit="128m", with_alertmanager=False)
    with Testbed(cfg) as testbed:
        yield testbed


def test_prometheus_source_reads_request_count_per_replica(bed: Testbed) -> None:
    replica = bed.replicas[0]
    for _ in range(5):
        assert replica.predict([1.0, 2.0]).status_code == 200
    assert bed.prometheus is not None
    url = f"http://127.0.0.1:{bed.prometheus.port}"
    # A metric name with colons at the start is written as a __name__ selector.
    query = PromQuery(
        "requests", 'sum by (replica, model) ({__name__=":tensorflow:serving:request_count"})', "replica", "model"
    )
    queue = SignalQueue(100, 100)
    src = PrometheusSource(queue, url, [query], interval_s=1.0, timeout_s=2.0)
    deadline = time.monotonic() + 20
    samples: list[Sample] = []
    while time.monotonic() < deadline and not samples:
        samples = [s for s in src.poll_once() or [] if s.value >= 5]
        time.sleep(0.5)
    assert src.connected and src.last_error is None
    assert [(s.target, s.series) for s in samples] == [
        (Target(replica.name, engine="local", service="half_plus_two"), "requests")
    ]
    # Pointed at a closed port: reported, not raised, and no samples.
    dead = PrometheusSource(SignalQueue(10, 10), f"http://127.0.0.1:{free_ports(1)[0]}", [query], timeout_s=1.0)
    assert dead.poll_once() is None and not dead.connected and "connection" in (dead.last_error or "")


def test_stats_source_reports_sensible_memory(bed: Testbed) -> None:
    replica = bed.replicas[0]
    queue = SignalQueue(100, 1000)
    src = DockerStatsSource(queue, label_selector=selector(bed.run_id), interval_s=1.0)
    src.start()
    try:
        deadline = time.monotonic() + 15
        got: dict[str, Sample] = {}
        while time.monotonic() < deadline and len(got) < 4:
            for e in queue.get_batch(100, 0.5):
                assert isinstance(e.signal, Sample)
                got[e.signal.series] = e.signal
        assert src.connected and src.rounds >= 1 and src.last_error is None
    finally:
        src.stop()
    assert got["memory_limit_bytes"].value == 128 * 1024 * 1024
    assert 5e6 < got["memory_working_set_bytes"].value <= got["memory_usage_bytes"].value < 128 * 1024 * 1024
    assert got["cpu_usage_seconds_total"].value > 0
    assert got["memory_usage_bytes"].target == Target(replica.name, "local", "half_plus_two")
    assert got["memory_usage_bytes"].labels["name"] == replica.name


def test_cgroup_files_give_what_docker_stats_gives_without_a_docker_call(bed: Testbed) -> None:
    """The near-the-limit reads (issue #17): the replica's own cgroup files on this host, located
    from its id alone, say what Docker's stats say (the same limit, the working set within a few
    MB: the two readings are moments apart), and the source then reads them instead of Docker."""
    replica = bed.replicas[0]
    container = bed.client.containers.get(replica.name)
    files = locate(Path("/sys/fs/cgroup"), container.id)
    assert files is not None, "the testbed's replica has no cgroup files where the watcher looks"
    from_files = files.read()
    from_docker = stats_to_values(bed.client.api.stats(container.id, stream=False, one_shot=True))
    assert from_files["memory_limit_bytes"] == from_docker["memory_limit_bytes"] == 128 * 1024 * 1024
    assert abs(from_files["memory_working_set_bytes"] - from_docker["memory_working_set_bytes"]) < 8e6
    queue = SignalQueue(100, 1000)
    root = Path("/sys/fs/cgroup")
    src = DockerStatsSource(queue, label_selector=selector(bed.run_id), near_interval_s=1.0, cgroup_root=root)
    src.inventory.start()  # lists once before it returns
    try:
        samples = src.collect_once()
        series = {s.series for s in samples}
        assert series >= {"memory_working_set_bytes", "memory_limit_bytes", "cpu_usage_seconds_total"}
        assert src.status()["read_from_cgroup_files"] == 1
    finally:
        src.inventory.stop()


def test_events_oom_die_start_and_replay_after_watcher_restart(bed: Testbed, tmp_path: Path) -> None:
    replica = bed.replicas[0]
    store = Store(tmp_path / "s.db")
    sel = selector(bed.run_id)

    def collect(queue: SignalQueue, until: Any, timeout_s: float) -> list[Lifecycle]:
        out: list[Lifecycle] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(out):
            batch = queue.get_batch(100, 0.2)
            out.extend(e.signal for e in batch if isinstance(e.signal, Lifecycle))
            store.set_cursors(dict(e.cursor for e in batch if e.cursor is not None))
        return out

    # 1. While the watcher is down, the replica is restarted: the next run still hears of it.
    q1 = SignalQueue(100, 1000)
    first = DockerEventsSource(q1, store, label_selector=sel)
    first.start()
    time.sleep(0.5)
    first.stop()
    store.set_cursor(first.cursor_key("local"), str(time.time_ns()))
    replica.container.restart(timeout=1)
    replica.wait_available(timeout_s=30)
    q2 = SignalQueue(100, 1000)
    second = DockerEventsSource(q2, store, label_selector=sel)
    second.start()
    try:
        kinds = collect(q2, lambda ev: {LifecycleKind.RESTART} <= {e.kind for e in ev}, 10)
        assert {LifecycleKind.DIE, LifecycleKind.START, LifecycleKind.RESTART} <= {e.kind for e in kinds}
        assert second.connected

        # 2. A leak ends in a real OOM kill and a restart by the restart policy.
        t0 = time.time()
        replica.set_faults({"leak": {"mb_per_s": 40}})

        def done(ev: list[Lifecycle]) -> bool:
            return any(e.kind is LifecycleKind.START and e.ts > t0 for e in ev)

        events = collect(q2, done, 40)
    finally:
        second.stop()
    after = [e for e in events if e.ts >= t0]
    kinds_after = [e.kind for e in after]
    assert LifecycleKind.OOM in kinds_after and LifecycleKind.START in kinds_after, kinds_after
    die = next(e for e in after if e.kind is LifecycleKind.DIE)
    assert die.exit_code == 137 and die.target == Target(replica.name, "local", "half_plus_two")
    assert die.attributes["image"] and die.attributes["name"] == replica.name
    assert kinds_after.index(LifecycleKind.OOM) < kinds_after.index(LifecycleKind.START)
