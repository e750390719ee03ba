"""``engines: {}`` (the Kubernetes manifest): no Docker engine at all, observe-and-alert only.

The watcher must build without touching Docker (a pod has no socket: it used to die at start with
a traceback), start no Docker source, and say on /readyz what it watches and what it cannot.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from watcher.config import Settings
from watcher.rulepack.compile import compile_packs
from watcher.rules import SHIPPED_RULES
from watcher.service import Service


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _no_docker(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("observe-and-alert mode built a Docker client")


@pytest.fixture
def make_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(docker, "DockerClient", _no_docker)
    monkeypatch.setattr(docker, "from_env", _no_docker)
    made: list[Service] = []

    def make(**overrides: Any) -> Service:
        settings = Settings(
            store=tmp_path / f"w{len(made)}.db", engines={}, api_listen=f"127.0.0.1:{_free_port()}", **overrides
        )
        made.append(Service(settings, compile_packs([SHIPPED_RULES])))
        return made[-1]

    yield make
    for svc in made:
        svc.api.stop()
        svc.store.close()


def test_no_engine_builds_without_docker_and_readyz_says_what_it_watches(make_service: Any) -> None:
    svc = make_service(prometheus_url="http://127.0.0.1:9")
    assert svc.clients == {}
    assert [s.name for s in svc.live.sources] == ["prometheus"]  # no Docker logs, events or stats source
    svc.live.prometheus.connected = True  # as after a first answered query
    _, detail = svc._ready()  # (not started here: its threads are not alive, so not ready as a whole)
    assert detail["sources"] == {"prometheus": True} and "problem" not in detail["watching"]
    watching = detail["watching"]
    assert watching["docker"].startswith("not configured") and "observe-and-alert only" in watching["docker"]
    assert watching["prometheus"] == "connected" and watching["actions"].startswith("none possible")


def test_no_engine_and_nothing_else_is_not_ready(make_service: Any) -> None:
    ready, detail = make_service()._ready()
    assert not ready and detail["sources"] == {}
    assert detail["watching"]["problem"].startswith("nothing to watch")
