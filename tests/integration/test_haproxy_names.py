"""Names that reach HAProxy's runtime API cannot chain a command (issue #14): a real HAProxy on loopback.

The runtime API splits a line on ``;`` (and the socket on newlines), so ``m; disable server m/a``
as a backend name, or as a server name from a container label, would be a second command. Each
must be refused before anything is sent, and HAProxy's state must be exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.ports import LOOPBACK, free_port
from testbed.services import HAProxy, Upstream
from watcher.actions.base import ActionError, Replica
from watcher.actions.haproxy import HAProxyShifter
from watcher.model import Target

pytestmark = pytest.mark.integration

HOSTILE = [
    "m; disable server m/a",
    "m;disable server m/a",
    "m\ndisable server m/a",
    "m disable",
    "m/a",
    "",
]


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[HAProxy]:
    servers = [Upstream(name, f"{LOOPBACK}:{free_port()}", 10) for name in ("a", "b")]
    lb = HAProxy(tmp_path, free_port(), "m", servers)
    lb.start()
    try:
        yield lb
    finally:
        lb.stop()


def state(lb: HAProxy) -> dict[str, tuple[str, int]]:
    servers = HAProxyShifter(lb.socket_path, lb.backend).servers()
    return {name: (info["state"], info["weight"]) for name, info in servers.items()}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_backend_name_is_refused_and_haproxy_is_untouched(haproxy: HAProxy, name: str) -> None:
    before = state(haproxy)
    assert before == {"a": ("ready", 10), "b": ("ready", 10)}
    with pytest.raises(ActionError, match="not a HAProxy name"):
        HAProxyShifter(haproxy.socket_path, name)
    shifter = HAProxyShifter(haproxy.socket_path, haproxy.backend)
    with pytest.raises(ActionError, match="not a HAProxy name"):
        shifter.runtime.servers_state(name)
    shifter.backend = name  # as if it had been changed after construction: the command is refused too
    replica = Replica(Target("a"), "127.0.0.1:1", "http://127.0.0.1:1", "m", lb_name="a")
    with pytest.raises(ActionError):
        shifter.set_weight(replica, 0)
    assert state(haproxy) == before


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", [h.replace("m/a", "m/b") for h in HOSTILE if h])
def test_a_hostile_server_name_from_a_label_is_refused_and_haproxy_is_untouched(haproxy: HAProxy, name: str) -> None:
    before = state(haproxy)
    shifter = HAProxyShifter(haproxy.socket_path, haproxy.backend)
    replica = Replica(Target("a"), "127.0.0.1:1", "http://127.0.0.1:1", "m", lb_name=name)
    with pytest.raises(ActionError, match="not a HAProxy name"):
        shifter.set_weight(replica, 0)
    assert state(haproxy) == before


@pytest.mark.timeout(60)
def test_names_haproxy_allows_still_work(haproxy: HAProxy) -> None:
    shifter = HAProxyShifter(haproxy.socket_path, haproxy.backend)
    replica = Replica(Target("a"), "127.0.0.1:1", "http://127.0.0.1:1", "m", lb_name="a")
    shifter.set_weight(replica, 0)
    assert state(haproxy)["a"] == ("drain", 10)
    shifter.set_weight(replica, 10)
    assert state(haproxy) == {"a": ("ready", 10), "b": ("ready", 10)}
