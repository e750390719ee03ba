"""The Docker engine restarts under the watcher mid-stream (issue #14): no log line lost or repeated.

A second engine of the test's own (:class:`testbed.engines.ExtraEngine`; the shared engine serves
the other tests and is never restarted) runs one watched container printing numbered lines at a
steady rate. The watcher's own log source reads it the way the watcher is assembled (one shared
inventory over ``make_clients({name: url})``, the logs and events sources on it, cursors committed
after processing), while the engine is stopped with SIGTERM and started again with the same flags.
What was delivered is compared with the engine's own log of the container, line for line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from testbed.engines import ExtraEngine
from tests.integration.test_sources import Consumer
from watcher.inventory import Inventory, LabelNames, make_clients
from watcher.model import Lifecycle, LogRecord
from watcher.sources.base import Envelope, SignalQueue
from watcher.sources.docker_events import DockerEventsSource
from watcher.sources.docker_logs import DockerLogsSource
from watcher.store import Store

pytestmark = pytest.mark.integration

ENGINE = "second"
RATE_HZ = 20
RESCAN_S = 5.0  # LiveConfig's default
# Logs re-attach on the first rescan that lists the engine again, and so does the events stream
# (its own retries back off 0.5, 1, 2, 4, 8, 16 s: after a 16 s outage it would wait ~15 s more).
RECONNECT_BOUND_S = RESCAN_S + 2.0
LONG_OUTAGE_S = 16.0
# Numbered lines at a steady rate (dash and sleep: the engine gets a 2 MB image in a fraction of a
# second); the run id tells the runs of one container apart, and SIGTERM ends it at once (PID 1
# ignores SIGTERM without a handler).
COUNTER = f"""
trap 'exit 0' TERM
read run < /proc/sys/kernel/random/uuid
i=0
while :; do i=$((i + 1)); echo "seq $run $i"; sleep {1 / RATE_HZ}; done
"""
IMAGE = "extra-engine/tools:latest"


@pytest.fixture(scope="module")
def engine(docker_client: docker.DockerClient) -> Iterator[ExtraEngine]:
    with ExtraEngine(live_restore=True, name=ENGINE) as eng:
        took = eng.import_host_tools(IMAGE)
        print(f"\nsecond engine up (pid {eng.pid}), image imported in {took:.2f} s")
        yield eng
    assert docker_client.ping()  # the shared engine was never touched
    # Nothing of the second engine is left: no dockerd, containerd or shim, no mount, no directory.
    assert processes_mentioning(str(eng.root)) == [] and eng.mounts() == [] and not eng.root.exists()


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue  # ended meanwhile
    return pids


class RecordingConsumer(Consumer):
    """Also keeps the lifecycle signals (the events stream's deliveries), in order."""

    def __init__(self, queue: SignalQueue, store: Store) -> None:
        self.lifecycle: list[Lifecycle] = []
        super().__init__(queue, store)

    def _run(self) -> None:
        while not self._stop.is_set():
            batch: list[Envelope] = self.queue.get_batch(1024, 0.1)
            self.records.extend(e.signal for e in batch if isinstance(e.signal, LogRecord))
            self.lifecycle.extend(e.signal for e in batch if isinstance(e.signal, Lifecycle))
            self.store.set_cursors(dict(e.cursor for e in batch if e.cursor is not None))


class Watcher:
    """The watcher's Docker sources on one engine, built as ``LiveWatcher`` builds them."""

    def __init__(self, url: str, store: Store) -> None:
        self.queue = SignalQueue(100_000, 200_000)
        self.inventory = Inventory(make_clients({ENGINE: url}), LabelNames(), rescan_s=RESCAN_S)
        self.logs = DockerLogsSource(self.queue, store, backfill_s=None, inventory=self.inventory)
        self.events = DockerEventsSource(self.queue, store, inventory=self.inventory)
        self.consumer = RecordingConsumer(self.queue, store)

    def start(self) -> None:
        self.logs.start()
        self.events.start()
        self.inventory.start()  # after the sources, as LiveWatcher does

    def stop(self) -> None:
        self.inventory.stop()
        self.logs.stop()
        self.events.stop()
        self.consumer.stop()

    def lines(self) -> list[str]:
        return self.consumer.messages("counter")


def run_counter(engine: ExtraEngine, **kw: Any) -> Any:
    return engine.client().containers.run(
        IMAGE,
        ["dash", "-c", COUNTER],
        name="counter",
        labels={"watcher.enable": "true", "watcher.service": "svc"},
        network_mode="host",
        detach=True,
        **kw,
    )


def restart_mid_stream(engine: ExtraEngine, w: Watcher, down_s: float) -> dict[str, float]:
    """Stream a while, restart the engine, and time how long after it answers again the source
    delivers again and the events stream is back (neither is told that the engine restarted)."""
    w.consumer.wait_for(lambda: len(w.lines()) >= 2 * RATE_HZ, 20)
    opened = w.inventory.streams_opened()[ENGINE]
    stop_s, start_s = engine.restart(down_s=down_s)
    up, at_up = time.monotonic(), len(w.lines())  # the old stream died with the old dockerd
    w.consumer.wait_for(lambda: len(w.lines()) > at_up, 30)
    reconnect_s = time.monotonic() - up
    w.consumer.wait_for(lambda: w.inventory.streams_opened()[ENGINE] > opened, 30)
    events_s = time.monotonic() - up
    w.consumer.wait_for(lambda: len(w.lines()) >= at_up + 2 * RATE_HZ, 20)
    return {"stop_s": stop_s, "start_s": start_s, "reconnect_s": reconnect_s, "events_s": events_s}


def engine_log(container: Any) -> list[str]:
    """The container's lines as the engine itself stored them: the ground truth."""
    return container.logs(stdout=True, stderr=True).decode().splitlines()  # type: ignore[no-any-return]


def finish(engine: ExtraEngine, w: Watcher, container: Any) -> list[str]:
    """Stop the container so its log is complete, wait for the source to drain it, return the truth."""
    container.stop(timeout=5)
    truth = engine_log(container)
    w.consumer.wait_for(lambda: len(w.lines()) >= len(truth), 20)
    time.sleep(1.0)  # a repeat would arrive after the count is reached
    return truth


def lifecycle_kinds(w: Watcher) -> list[str]:
    """The container's lifecycle signals in delivery order, checked for repeats on the way."""
    signals = [s for s in w.consumer.lifecycle if s.target.container == "counter"]
    assert len({(s.kind, s.ts) for s in signals}) == len(signals), signals  # no event delivered twice
    return [s.kind.value for s in signals]


def runs(lines: list[str]) -> dict[str, list[int]]:
    """boot stamp -> its sequence numbers in delivery order."""
    out: dict[str, list[int]] = {}
    for line in lines:
        _, boot, n = line.split()
        out.setdefault(boot, []).append(int(n))
    return out


def report(label: str, delivered: list[str], truth: list[str], timing: dict[str, float]) -> None:
    repeated = len(delivered) - len(set(delivered))
    missing = len(set(truth) - set(delivered))
    print(
        f"\n{label}: {len(delivered)} lines delivered, {missing} missing, {repeated} repeated; engine stop "
        f"{timing['stop_s']:.1f} s, start {timing['start_s']:.1f} s, source delivering again "
        f"{timing['reconnect_s']:.1f} s after the engine answered, events stream {timing['events_s']:.1f} s"
    )


def test_live_restore_engine_restart_loses_and_repeats_no_line(engine: ExtraEngine, tmp_path: Path) -> None:
    """With --live-restore the container prints on while dockerd is down; the source reconnects by
    itself, resumes at its cursor, and delivers the one unbroken sequence exactly once, in order."""
    engine.live_restore = True
    if engine.pid is None:
        engine.start()
    container = run_counter(engine)
    w = Watcher(engine.url, Store(tmp_path / "s.db"))
    w.start()
    try:
        timing = restart_mid_stream(engine, w, down_s=LONG_OUTAGE_S)
        assert container.id in w.logs.followed().values()  # re-attached by itself
        truth = finish(engine, w, container)
        delivered = w.lines()
    finally:
        w.stop()
        container.remove(force=True)
    report("live-restore", delivered, truth, timing)
    # The engine restart is not a replica crash: the only lifecycle signals are the final stop's.
    assert lifecycle_kinds(w) == ["die", "stop"]
    (seq,) = runs(truth).values()  # one run: the container never stopped
    assert seq == list(range(1, len(seq) + 1))
    assert delivered == truth  # every line once, none missing, in order
    assert timing["reconnect_s"] <= RECONNECT_BOUND_S and timing["events_s"] <= RECONNECT_BOUND_S


def test_engine_restart_without_live_restore_repeats_no_earlier_line(engine: ExtraEngine, tmp_path: Path) -> None:
    """Without --live-restore the engine stops the container on its way down and its restart policy
    starts it again: the lines of the first run are not delivered again, the second run's all are."""
    if engine.live_restore:
        engine.live_restore = False
        engine.restart()
    container = run_counter(engine, restart_policy={"Name": "always"})
    w = Watcher(engine.url, Store(tmp_path / "s.db"))
    w.start()
    try:
        timing = restart_mid_stream(engine, w, down_s=0.5)
        truth = finish(engine, w, container)
        delivered = w.lines()
    finally:
        w.stop()
        container.remove(force=True)
        engine.live_restore = True
    report("no live-restore", delivered, truth, timing)
    kinds = lifecycle_kinds(w)
    by_boot = runs(truth)
    assert len(by_boot) == 2  # stopped with the engine, started again by the policy
    for seq in by_boot.values():
        assert seq == list(range(1, len(seq) + 1))
    assert delivered == truth
    assert timing["reconnect_s"] <= RECONNECT_BOUND_S and timing["events_s"] <= RECONNECT_BOUND_S
    # The policy's start happened while the events stream was down (the engine starts containers
    # before it serves its API): the reconnect replays it from the cursor, once.
    assert kinds.count("start") == 1 and kinds[-2:] == ["die", "stop"], kinds
