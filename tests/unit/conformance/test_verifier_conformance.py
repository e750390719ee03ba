""":class:`~watcher.actions.verify.Verifier` over a model server run as a host process, per protocol.

:data:`SERVERS` says how to start a server speaking a protocol on a loopback port without Docker
(TF Serving REST: the simulator ``testbed/simulator/tfserving_sim.py``), serving ``half_plus_two``
versions 1 and 2 from a copy of ``models/``, with version 3 set to fail its load. Every adapter is
also in ``test_protocol_conformance.py`` (recorded answers) and the real MLServer/KServe servers are
in ``tests/integration/test_protocols_real.py`` (they need their own virtualenv).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.ports import LOOPBACK, free_port, port_is_open
from watcher.actions.base import ActionError, Replica
from watcher.actions.protocols import ServingProtocol, TFServingREST
from watcher.actions.verify import SmokeFileMissingError, Verifier, VersionState
from watcher.model import Target

REPO = Path(__file__).resolve().parents[3]
MODEL = "half_plus_two"


@dataclass
class Server:
    """A running model server: where it is, where its model repository is, how to stop it."""

    replica: Replica
    model_repo: Path  # the repository root (smoke files: <root>/<model>/<version>/smoke.json)
    stop: Callable[[], None]


def _tfserving_sim(tmp: Path) -> Server:
    shutil.copytree(REPO / "models", tmp / "models")
    port = free_port()
    log = open(tmp / "sim.log", "wb")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "testbed" / "simulator" / "tfserving_sim.py"),
            f"--rest_api_port={port}",
            f"--model_name={MODEL}",
            f"--model_base_path={tmp / 'models' / MODEL}",
            "--file_system_poll_wait_seconds=0.2",
            "--max_num_load_retries=0",
        ],
        stdout=log,
        stderr=log,
        env={"PATH": "/usr/bin:/bin", "SIM_FAULTS": json.dumps({"fail_load": {"versions": [3]}})},
        cwd=tmp,
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        log.close()

    deadline = time.monotonic() + 15
    while not port_is_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop()
            raise AssertionError(f"simulator did not start:\n{(tmp / 'sim.log').read_text()[-2000:]}")
        time.sleep(0.05)
    url = f"http://{LOOPBACK}:{port}"
    return Server(Replica(Target("sim-0", service=MODEL), f"{LOOPBACK}:{port}", url, MODEL), tmp / "models", stop)


SERVERS: dict[type[ServingProtocol], Callable[[Path], Server]] = {TFServingREST: _tfserving_sim}


@pytest.fixture(params=list(SERVERS), ids=lambda c: c.__name__)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Verifier, Server]]:
    server = SERVERS[request.param](tmp_path)
    server.replica = dataclasses.replace(server.replica, protocol=request.param.name)
    try:
        yield Verifier(poll_s=0.05), server
    finally:
        server.stop()


def publish_failing_version(server: Server) -> None:
    staging = server.model_repo / MODEL / ".tmp-3"
    shutil.copytree(server.model_repo / MODEL / "2", staging)
    staging.rename(server.model_repo / MODEL / "3")


def test_status_served_version_and_smoke(rig: tuple[Verifier, Server]) -> None:
    verifier, server = rig
    r = server.replica
    assert verifier.wait_available(r, timeout_s=15) == "2"
    assert VersionState("2", "AVAILABLE") in verifier.versions(r)
    assert verifier.served_version(r) == "2"
    assert verifier.load_failed(r) is None
    assert verifier.expected_version(server.model_repo / MODEL, None, None) == "2"
    verifier.smoke(r, "2", server.model_repo)


def test_smoke_catches_the_wrong_version(rig: tuple[Verifier, Server]) -> None:
    verifier, server = rig
    r = server.replica
    verifier.wait_available(r, timeout_s=15)
    with pytest.raises(ActionError, match=r"smoke prediction mismatch .* serves version 2"):
        verifier.smoke(r, "1", server.model_repo)  # version 1's stored answers, version 2 serving
    with pytest.raises(SmokeFileMissingError):
        verifier.smoke(r, "42", server.model_repo)


def test_load_failure_is_reported_and_the_old_version_keeps_serving(rig: tuple[Verifier, Server]) -> None:
    verifier, server = rig
    r = server.replica
    verifier.wait_available(r, timeout_s=15)
    publish_failing_version(server)
    deadline = time.monotonic() + 15
    while verifier.load_failed(r) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    failure = verifier.load_failed(r)
    assert failure is not None and failure.startswith("version 3: ")
    assert verifier.served_version(r) == "2"
    with pytest.raises(ActionError, match="not AVAILABLE"):
        verifier.wait_available(r, timeout_s=0.3, version="3")


def test_unknown_model_and_unreachable_server(rig: tuple[Verifier, Server]) -> None:
    verifier, server = rig
    verifier.wait_available(server.replica, timeout_s=15)
    ghost = Replica(server.replica.target, server.replica.upstream, server.replica.rest_url, "no_such_model")
    down = Replica(Target("down"), f"{LOOPBACK}:1", f"http://{LOOPBACK}:1", MODEL)
    for r in (ghost, down):
        with pytest.raises(ActionError, match=str(r.target.key)):
            verifier.versions(r)
        with pytest.raises(ActionError):
            verifier.predict(r, [1.0])
        assert verifier.served_version(r) is None and verifier.load_failed(r) is None
        with pytest.raises(ActionError, match="not AVAILABLE"):
            verifier.wait_available(r, timeout_s=0.2)
