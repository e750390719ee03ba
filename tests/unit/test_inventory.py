"""The inventory against a fake Docker engine: events keep it current, rescans repair it, one stream."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import pytest

from watcher.fleet import Fleet
from watcher.inventory import Inventory, LabelNames, Subscriber, Update
from watcher.model import LifecycleKind, Target
from watcher.sources.base import SignalQueue
from watcher.sources.docker_events import DockerEventsSource
from watcher.sources.docker_logs import DockerLogsSource, LogCursor
from watcher.sources.docker_stats import DockerStatsSource
from watcher.store import Store

WATCHED = {"watcher.enable": "true", "watcher.service": "svc"}
_ids = itertools.count(1)


class FakeContainer:
    def __init__(self, name: str, labels: dict[str, str]) -> None:
        self.id = f"{next(_ids):064x}"
        self.name = name
        self.labels = dict(labels)
        self.running = False
        self.health: str | None = None
        self.started_at = ""

    @property
    def attrs(self) -> dict[str, Any]:
        state: dict[str, Any] = {"Running": self.running, "StartedAt": self.started_at}
        if self.health is not None:
            state["Health"] = {"Status": self.health}
        return {"State": state, "Config": {"Tty": False}}


class FakeStream:
    def __init__(self) -> None:
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def push(self, event: dict[str, Any]) -> None:
        self._q.put(event)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (event := self._q.get()) is not None:
            yield event

    def close(self) -> None:
        self._q.put(None)


def selected(labels: Mapping[str, str], filters: Mapping[str, Any]) -> bool:
    wanted = [term.partition("=") for term in filters.get("label", [])]
    return all(k in labels and (not sep or labels[k] == v) for k, sep, v in wanted)


class FakeApi:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def containers(self, all: bool = False, filters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Docker's list entries: names, state, status (uptime, then health in parentheses), labels."""
        health = {"healthy": " (healthy)", "unhealthy": " (unhealthy)", "starting": " (health: starting)"}
        return [
            {
                "Id": c.id,
                "Names": [f"/{c.name}"],
                "State": "running" if c.running else "exited",
                "Status": (f"Up {time.time_ns()} s" if c.running else "Exited (0)") + health.get(c.health or "", ""),
                "Labels": dict(c.labels),
            }
            for c in self.engine.list(all=all, filters=filters)
        ]

    def stats(self, cid: str, stream: bool, one_shot: bool | None = None) -> dict[str, Any]:
        c = self.engine.by_id[cid]
        return {"memory_stats": {"usage": 100, "limit": 1000, "stats": {"inactive_file": 10}}} if c.running else {}


class FakeEngine:
    """Enough of docker.DockerClient for the inventory: list, get (inspect), events, api.stats."""

    def __init__(self) -> None:
        self.by_id: dict[str, FakeContainer] = {}
        self.streams: list[FakeStream] = []
        self.events_calls: list[dict[str, Any]] = []
        self.gets = 0
        self.failing = False
        self.containers = self
        self.api = FakeApi(self)
        self._lock = threading.Lock()

    # docker.DockerClient surface
    def list(self, all: bool = False, filters: Mapping[str, Any] | None = None, **_: Any) -> list[FakeContainer]:
        if self.failing:
            raise docker.errors.APIError("engine unreachable")
        with self._lock:
            return [c for c in self.by_id.values() if (all or c.running) and selected(c.labels, filters or {})]

    def get(self, cid: str) -> FakeContainer:
        self.gets += 1
        if self.failing:
            raise docker.errors.APIError("engine unreachable")
        with self._lock:
            if cid not in self.by_id:
                raise docker.errors.NotFound(f"no such container {cid}")
            return self.by_id[cid]

    def events(self, **kwargs: Any) -> FakeStream:
        if self.failing:
            raise docker.errors.APIError("engine unreachable")
        self.events_calls.append(kwargs)
        stream = FakeStream()
        self.streams.append(stream)
        return stream

    # what happens on the engine
    def emit(self, c: FakeContainer, action: str, time_nano: int | None = None) -> None:
        event = {
            "Type": "container",
            "Action": action,
            "id": c.id,
            "timeNano": time_nano or time.time_ns(),
            "Actor": {"ID": c.id, "Attributes": {"name": c.name, **c.labels}},
        }
        if selected(c.labels, {"label": ["watcher.enable=true"]}):
            for s in self.streams:
                s.push(event)

    def run(self, name: str, labels: Mapping[str, str] = WATCHED, quiet: bool = False) -> FakeContainer:
        c = FakeContainer(name, dict(labels))
        c.running, c.started_at = True, f"start-{time.time_ns()}"
        with self._lock:
            self.by_id[c.id] = c
        if not quiet:
            self.emit(c, "create")
            self.emit(c, "start")
        return c

    def stop(self, c: FakeContainer) -> None:
        c.running = False
        self.emit(c, "die")

    def restart(self, c: FakeContainer) -> None:
        c.started_at = f"start-{time.time_ns()}"
        self.emit(c, "restart")

    def rename(self, c: FakeContainer, new: str) -> None:
        c.name = new
        self.emit(c, "rename")

    def remove(self, c: FakeContainer) -> None:
        c.running = False
        with self._lock:
            del self.by_id[c.id]
        self.emit(c, "destroy")


def wait_until(pred: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


NAMES = LabelNames(("watcher.enable=true",), "watcher.service", "watcher.upstream", "watcher.model")


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def inventory(engine: FakeEngine) -> Iterator[Inventory]:
    inv = Inventory({"e1": engine}, NAMES, rescan_s=3600)  # rescans only when a test asks for one
    yield inv
    inv.stop()


def names(inv: Inventory) -> set[str]:
    return {c.name for c in inv.snapshot().current()}


def test_events_keep_it_current_and_a_rescan_repairs_what_no_event_said(
    engine: FakeEngine, inventory: Inventory
) -> None:
    up = engine.run("tfs-0", {**WATCHED, "watcher.upstream": "127.0.0.1:8501", "watcher.model": "m"})
    engine.run("other", {"watcher.enable": "false"})
    updates: list[Update] = []
    inventory.subscribe(Subscriber(on_update=updates.append))
    inventory.start()
    first = inventory.snapshot().by_key("e1/tfs-0")  # listed before start returns
    assert first is not None and first.id == up.id and first.running and first.serving
    assert first.target == Target("tfs-0", "e1", "svc")
    assert (first.upstream, first.model) == ("127.0.0.1:8501", "m")
    assert names(inventory) == {"tfs-0"}

    wait_until(lambda: engine.streams)
    engine.run("tfs-1")  # announced by its events
    wait_until(lambda: "tfs-1" in names(inventory))
    started = [ch.after for u in updates if not u.full for ch in u.changes if ch.before is None]
    assert [c.name for c in started if c is not None] == ["tfs-1"]

    engine.run("tfs-2", quiet=True)  # no event reached us: the rescan finds it
    time.sleep(0.1)
    assert "tfs-2" not in names(inventory)
    inventory.rescan()
    assert names(inventory) == {"tfs-0", "tfs-1", "tfs-2"}
    assert updates[-1].full

    c1 = next(c for c in engine.by_id.values() if c.name == "tfs-1")
    c1.health = "unhealthy"
    engine.emit(c1, "health_status: unhealthy")
    wait_until(lambda: (c := inventory.snapshot().by_key("e1/tfs-1")) is not None and not c.serving)
    engine.stop(c1)
    wait_until(lambda: (c := inventory.snapshot().by_key("e1/tfs-1")) is not None and not c.running)
    assert {c.name for c in inventory.snapshot().running()} == {"tfs-0", "tfs-2"}
    assert inventory.streams_opened() == {"e1": 1}  # one events stream, however many changes


def test_renamed_destroyed_and_recreated_with_other_labels(engine: FakeEngine, inventory: Inventory) -> None:
    c = engine.run("tfs-0")
    inventory.start()
    wait_until(lambda: engine.streams)
    changes: list[tuple[str | None, str | None]] = []
    inventory.subscribe(
        Subscriber(
            on_update=lambda u: changes.extend(
                (ch.before and ch.before.name, ch.after and ch.after.name) for ch in u.changes
            )
        )
    )

    engine.rename(c, "tfs-renamed")
    wait_until(lambda: names(inventory) == {"tfs-renamed"})
    assert changes == [("tfs-0", "tfs-renamed")]  # the same container (id), under its new name
    assert inventory.snapshot().by_key("e1/tfs-0") is None

    engine.remove(c)
    wait_until(lambda: names(inventory) == set())
    assert changes[-1] == ("tfs-renamed", None)

    again = engine.run("tfs-renamed", {**WATCHED, "watcher.service": "other-svc"})
    wait_until(lambda: names(inventory) == {"tfs-renamed"})
    now = inventory.snapshot().by_key("e1/tfs-renamed")
    assert now is not None and now.id == again.id and now.target.service == "other-svc"

    # Labels seen to differ by a rescan (no event): the change is published, and a container that
    # no longer matches the selector leaves the inventory.
    again.labels["watcher.upstream"] = "127.0.0.1:9000"
    inventory.rescan()
    now = inventory.snapshot().by_key("e1/tfs-renamed")
    assert now is not None and now.upstream == "127.0.0.1:9000"
    again.labels["watcher.enable"] = "false"
    inventory.rescan()
    assert names(inventory) == set()


def test_forgets_destroyed_containers(engine: FakeEngine, inventory: Inventory) -> None:
    inventory.start()
    wait_until(lambda: engine.streams)
    for i in range(50):
        engine.remove(engine.run(f"short-{i}"))
    last = engine.run("last")
    wait_until(lambda: names(inventory) == {"last"})
    engine.remove(last)
    engine.run("quiet-then-gone", quiet=True)
    inventory.rescan()
    gone = next(c for c in engine.by_id.values() if c.name == "quiet-then-gone")
    with engine._lock:
        del engine.by_id[gone.id]  # destroyed while the stream was down: no event
    inventory.rescan()
    assert sum(len(cs) for cs in inventory.snapshot().engines.values()) == 0


def test_an_engine_that_errors_is_reported_and_left_out_until_it_recovers(engine: FakeEngine) -> None:
    bad = FakeEngine()
    bad.run("on-bad")
    bad.failing = True
    engine.run("on-good")
    inv = Inventory({"good": engine, "bad": bad}, NAMES, rescan_s=3600, backoff_cap_s=0.2)  # type: ignore[dict-item]
    states: list[tuple[str, bool]] = []
    inv.subscribe(Subscriber(on_engine=lambda e, s: states.append((e, s.listed))))
    try:
        inv.start()
        assert names(inv) == {"on-good"}
        state = inv.engine_states()["bad"]
        assert not state.listed and state.error is not None and state.error.startswith("bad: ")
        assert "engine unreachable" in state.error
        wait_until(lambda: inv.engine_states()["bad"].reconnects >= 2)  # retried with backoff
        assert inv.engine_states()["good"].listed and inv.engine_states()["good"].streaming
        bad.failing = False
        wait_until(lambda: names(inv) == {"on-good", "on-bad"})  # the reconnect rescans at once
        assert ("bad", True) in states and inv.engine_states()["bad"].streaming
        assert inv.streams_opened() == {"good": 1, "bad": 1}
    finally:
        inv.stop()


def test_a_rescan_that_finds_a_restarted_engine_reconnects_its_events_stream_at_once(engine: FakeEngine) -> None:
    # dockerd restarted: the events stream failed a few times and backs off for longer each time.
    # Once a rescan sees the engine answer again the stream must not sleep out that backoff (up to
    # backoff_cap_s), or lifecycle signals (die, oom, start) arrive that much late.
    engine.run("replica")
    inv = Inventory({"e1": engine}, NAMES, rescan_s=3600, backoff_cap_s=60)  # type: ignore[dict-item]
    try:
        inv.start()
        engine.failing = True
        engine.streams[0].close()  # the old dockerd went away
        wait_until(lambda: inv.engine_states()["e1"].reconnects >= 3)  # now backing off 2 s, then 4 s
        engine.failing = False
        inv.rescan()  # what the rescan loop does every rescan_s
        t0 = time.monotonic()
        wait_until(lambda: inv.engine_states()["e1"].streaming, timeout_s=1.0)
        assert time.monotonic() - t0 < 0.5 and inv.streams_opened() == {"e1": 2}
    finally:
        inv.stop()


def test_lifecycle_events_ride_the_same_stream_and_resume_from_their_cursor(engine: FakeEngine, tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    inv = Inventory({"e1": engine}, NAMES, rescan_s=3600)
    q = SignalQueue(1000, 1000)
    events = DockerEventsSource(q, store, inventory=inv)
    logs_q = SignalQueue(10, 10)
    logs = DockerLogsSource(logs_q, store, inventory=inv)
    stats = DockerStatsSource(SignalQueue(100, 100), interval_s=3600, inventory=inv)
    resume_ns = time.time_ns() - 2_000_000_000
    store.set_cursor(events.cursor_key("e1"), str(resume_ns))
    c = engine.run("tfs-0", quiet=True)
    for s in (events, logs, stats):
        s.start()
    inv.start()
    try:
        wait_until(lambda: events.connected)
        assert engine.events_calls == [
            {
                "decode": True,
                "filters": {"type": "container", "label": ["watcher.enable=true"]},
                "since": f"{resume_ns // 10**9}.{resume_ns % 10**9:09d}",
            }
        ]
        # An event from before the rescan that followed the connect is forwarded, not re-inspected.
        gets = engine.gets
        engine.emit(c, "start", time_nano=resume_ns + 1)
        engine.restart(c)
        wait_until(lambda: q.depth >= 2)
        kinds = [e.signal.kind for e in q.get_batch(10, 0)]  # type: ignore[union-attr]
        assert kinds == [LifecycleKind.START, LifecycleKind.RESTART]
        wait_until(lambda: engine.gets == gets + 1)  # the restart only
        samples = stats.collect_once()
        assert {s.series for s in samples} >= {"memory_working_set_bytes"}
        assert {s.target for s in samples} == {Target("tfs-0", "e1", "svc")}
        assert len(engine.events_calls) == 1  # three Docker sources, one stream
    finally:
        inv.stop()
        for s in (events, logs, stats):
            s.stop()


def test_fleet_is_a_view_over_the_inventory(engine: FakeEngine, inventory: Inventory) -> None:
    lb = {"127.0.0.1:1": 1, "127.0.0.1:2": 0, "127.0.0.1:3": 1}
    made = []
    for i in (1, 2, 3):
        made.append(engine.run(f"r{i}", {**WATCHED, "watcher.upstream": f"127.0.0.1:{i}", "watcher.model": "m"}))
    made[2].running = False
    engine.run("no-upstream")
    inventory.start()
    fleet = Fleet(inventory, weight_of=lambda r: lb[r.upstream])
    views = fleet.views()
    assert {k: v.serving for k, v in views.items()} == {
        "e1/r1": True,
        "e1/r2": False,  # drained at the load balancer
        "e1/r3": False,  # stopped
        "e1/no-upstream": True,
    }
    assert views["e1/r1"].service == "svc"
    r1 = fleet.replica("e1/r1")
    assert r1 is not None and (r1.upstream, r1.rest_url, r1.model) == ("127.0.0.1:1", "http://127.0.0.1:1", "m")
    assert fleet.replica("e1/no-upstream") is None
    engine.run("late", {**WATCHED, "watcher.upstream": "127.0.0.1:4", "watcher.model": "m"}, quiet=True)
    late = fleet.replica("e1/late")  # unknown: the inventory looks again
    assert late is not None and late.upstream == "127.0.0.1:4"


def test_log_source_forgets_positions_of_gone_containers_once_committed(
    engine: FakeEngine, inventory: Inventory, tmp_path: Path
) -> None:
    store = Store(tmp_path / "s.db")
    logs = DockerLogsSource(SignalQueue(10, 10), store, inventory=inventory)
    committed, pending = LogCursor("2024-05-01T10:00:00.000000001Z", 1), LogCursor("2024-05-01T10:00:00.5Z", 2)
    logs._advance("e1", "gone-committed", committed)
    logs._advance("e1", "gone-pending", pending)
    store.set_cursor("docker_logs/e1/gone-committed", committed.encode())
    store.set_cursor("docker_logs/e1/gone-pending", committed.encode())  # the engine has not caught up
    inventory.rescan()
    logs._on_update(Update("e1", inventory.snapshot(), (), full=True))
    assert set(logs._positions) == {("e1", "gone-pending")}  # forgetting it would repeat lines


def test_a_periodic_rescan_inspects_only_containers_whose_list_entry_changed(
    engine: FakeEngine, inventory: Inventory
) -> None:
    fleet = [engine.run(f"tfs-{i}", quiet=True) for i in range(20)]
    inventory.rescan()  # thorough: every container inspected
    assert engine.gets == 20
    inventory._rescan_one("e1", thorough=False)
    assert engine.gets == 20  # nothing listed changed (the uptime in Status does not count)
    fleet[3].health = "unhealthy"  # no event reached the inventory: only the list shows it
    fleet[7].running = False
    new = engine.run("tfs-new", quiet=True)
    inventory._rescan_one("e1", thorough=False)
    assert engine.gets == 23
    snap = inventory.snapshot()
    assert snap.by_key("e1/tfs-3") is not None and not snap.by_key("e1/tfs-3").serving  # type: ignore[union-attr]
    assert snap.by_key("e1/tfs-7") is not None and not snap.by_key("e1/tfs-7").running  # type: ignore[union-attr]
    assert snap.by_key("e1/tfs-new") is not None and snap.by_key("e1/tfs-new").id == new.id  # type: ignore[union-attr]
    engine.remove(fleet[0])
    inventory._rescan_one("e1", thorough=False)
    assert engine.gets == 23 and inventory.snapshot().by_key("e1/tfs-0") is None  # gone without an inspect


def test_every_sixth_periodic_rescan_inspects_everything(engine: FakeEngine) -> None:
    for i in range(4):
        engine.run(f"tfs-{i}", quiet=True)
    inv = Inventory({"e1": engine}, NAMES, rescan_s=0.1)  # type: ignore[dict-item]
    inv.start()
    try:
        wait_until(lambda: engine.gets == 8)  # start, then the events stream's connect: both thorough
        time.sleep(0.25)  # periods 1 and 2: nothing changed, nothing inspected
        assert engine.gets == 8
        wait_until(lambda: engine.gets == 12)  # the sixth period: everything again
    finally:
        inv.stop()
