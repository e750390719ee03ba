"""The inventory on a real Docker engine: a container started after the watcher is followed,
sampled and visible to the fleet, all from one events stream per engine."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from testbed.images import ensure_images
from testbed.replicas import TESTBED_LABEL, remove_testbed_containers
from watcher.fleet import Fleet
from watcher.live import LiveConfig, LiveWatcher
from watcher.model import Lifecycle, LifecycleKind, LogRecord, Sample, Signal, Target
from watcher.sources.docker_logs import DockerLogsSource
from watcher.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture
def run_id(docker_client: docker.DockerClient) -> Iterator[str]:
    rid = "inv-" + uuid.uuid4().hex[:8]
    yield rid
    remove_testbed_containers(docker_client, rid)


@pytest.fixture
def event_streams(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every Docker events stream opened in this process, by engine URL (whoever opens it)."""
    opened: list[str] = []
    lock = threading.Lock()
    original = docker.APIClient.events

    def counting(self: docker.APIClient, *args: Any, **kwargs: Any) -> Any:
        with lock:
            opened.append(str(self.base_url))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(docker.APIClient, "events", counting)
    return opened


def wait_for(pred: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def test_container_started_later_is_followed_sampled_and_in_the_fleet_from_one_stream(
    docker_client: docker.DockerClient, run_id: str, event_streams: list[str], tmp_path: Path
) -> None:
    config = LiveConfig(
        label_selector=("watcher.enable=true", f"{TESTBED_LABEL}={run_id}"),
        stats_interval_s=1.0,
        rescan_s=60.0,  # no rescan within the test: the events stream is what finds the newcomer
        backfill_s=None,
    )
    live = LiveWatcher(config, [], Store(tmp_path / "w.db"))
    seen: list[Signal] = []
    original = live.engine.feed_batch

    def spy(signals: list[Any]) -> list[Any]:
        seen.extend(signals)
        return original(signals)

    live.engine.feed_batch = spy  # type: ignore[method-assign]
    fleet = Fleet(live.inventory)
    with live:
        assert fleet.views() == {}
        started = time.time()
        c = docker_client.containers.run(
            str(ensure_images(docker_client)["simulator"].tag),
            entrypoint=["python3", "-u", "-c", "import time\nprint('hello from the newcomer')\ntime.sleep(120)"],
            command=[],
            name=f"{run_id}-late",
            labels={
                TESTBED_LABEL: run_id,
                "watcher.enable": "true",
                "watcher.service": "svc",
                "watcher.upstream": "127.0.0.1:1",
                "watcher.model": "m",
            },
            network_mode="none",
            detach=True,
        )
        target = Target(c.name, "local", "svc")

        def logs() -> list[str]:
            return [s.message for s in list(seen) if isinstance(s, LogRecord) and s.target == target]

        def samples() -> set[str]:
            return {s.series for s in list(seen) if isinstance(s, Sample) and s.target == target}

        wait_for(lambda: logs() == ["hello from the newcomer"], 15, "the newcomer's log line")
        wait_for(lambda: "memory_working_set_bytes" in samples(), 15, "a stats sample of the newcomer")
        starts = [s for s in list(seen) if isinstance(s, Lifecycle) and s.target == target]
        assert [s.kind for s in starts if s.kind is LifecycleKind.START] == [LifecycleKind.START]
        assert all(s.ts >= started - 1 for s in starts)
        views = fleet.views()
        assert set(views) == {target.key} and views[target.key].serving
        replica = fleet.replica(target.key)
        assert replica is not None and (replica.upstream, replica.model) == ("127.0.0.1:1", "m")
        logs_source = next(s for s in live.sources if isinstance(s, DockerLogsSource))
        assert logs_source.followed() == {target.key: c.id}
        live.refresh_upstreams()
        assert live.engine.upstreams == {"127.0.0.1:1": target}

        c.stop(timeout=1)
        wait_for(lambda: not fleet.views()[target.key].serving, 10, "the stopped newcomer out of service")
    # Logs, lifecycle events, stats, fleet and upstream map: one events stream for the one engine.
    assert len(event_streams) == 1, event_streams
    assert live.inventory.streams_opened() == {"local": 1}
