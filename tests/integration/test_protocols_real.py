"""The protocol adapters against real MLServer and KServe model servers, run as host processes on
loopback (no Docker), from the virtualenv ``scripts/install-oip-servers.sh`` makes.

MLServer serves ``lin`` versions 1 and 2 (sklearn LinearRegression) and speaks V2 with the
repository extension; KServe serves ``lin`` at one version per process (it has no versions) and
speaks V1 and V2. Each must: be ready, report the served version where the protocol can, give the
stored smoke answers of the version it serves and not the other's, and call a model that failed to
load not ready.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from testbed.ports import LOOPBACK, free_port, port_is_open
from testbed.servers.models import SMOKE_INSTANCES, expected, write_broken_mlserver_model, write_smoke_repo
from watcher.actions.base import ActionError, Replica
from watcher.actions.verify import Verifier
from watcher.model import Target
from watcher.playbook.base import StepFailed
from watcher.playbook.verification import check_serving

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("OIP_VENV", REPO / "build" / "oip-venv"))
PYTHON = VENV / "bin" / "python"
if not (VENV / "bin" / "mlserver").exists():
    why = f"no MLServer/KServe virtualenv at {VENV}: run scripts/install-oip-servers.sh (or set OIP_VENV)"
    if os.environ.get("CI"):  # `make integration` installs it: in CI a missing server is a failure
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)


@dataclasses.dataclass
class Running:
    url: str
    workdir: Path
    proc: subprocess.Popen[bytes]

    def replica(self, model: str, protocol: str) -> Replica:
        upstream = self.url.removeprefix("http://")
        return Replica(Target(f"{protocol}-{upstream}"), upstream, self.url, model, protocol=protocol)


def _start(args: list[str], port: int, workdir: Path, faults: Path | None = None) -> Running:
    """``faults``: the model-made fault switch the server's model reads (testbed/servers/faults.py)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    env = {"PATH": f"{VENV / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(workdir)}
    if faults is not None:
        env["TESTBED_FAULTS"] = str(faults)
    proc = subprocess.Popen(
        [str(PYTHON), "-m", "testbed.servers.host", *args], stdout=log, stderr=log, env=env, cwd=REPO
    )
    log.close()
    deadline = time.monotonic() + 60
    while not port_is_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise AssertionError(f"server did not start:\n{(workdir / 'server.log').read_text()[-3000:]}")
        time.sleep(0.1)
    return Running(f"http://{LOOPBACK}:{port}", workdir, proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    http, grpc, metrics = free_port(), free_port(), free_port()
    workdir = tmp_path_factory.mktemp("mlserver")
    args = ["mlserver", "--workdir", str(workdir), "--http-port", str(http)]
    server = _start([*args, "--grpc-port", str(grpc), "--metrics-port", str(metrics)], http, workdir)
    yield server
    _stop(server.proc)


@pytest.fixture(scope="module", params=["1", "2"])
def kserve(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Running]]:
    port = free_port()
    workdir = tmp_path_factory.mktemp(f"kserve-v{request.param}")
    server = _start(["kserve", "--http-port", str(port), "--version", request.param], port, workdir)
    yield request.param, server
    _stop(server.proc)


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<repo>/lin/<version>/smoke.json`` for both versions, from the model's definition."""
    return write_smoke_repo(tmp_path_factory.mktemp("smoke"))


def _wait_ready(verifier: Verifier, replica: Replica) -> None:
    deadline = time.monotonic() + 30
    while not verifier.adapter(replica).ready(replica).ok:
        assert time.monotonic() < deadline, verifier.adapter(replica).ready(replica).why
        time.sleep(0.1)


def test_mlserver_v2_ready_versions_and_smoke(mlserver: Running, smoke_repo: Path) -> None:
    verifier = Verifier(poll_s=0.1)
    lin = mlserver.replica("lin", "v2")
    assert verifier.wait_available(lin, timeout_s=30) == "2"  # the unversioned endpoint serves the newest
    assert {(v.version, v.state) for v in verifier.versions(lin) or []} == {("1", "AVAILABLE"), ("2", "AVAILABLE")}
    assert verifier.served_version(lin) == "2"
    verifier.smoke(lin, "2", smoke_repo)
    with pytest.raises(ActionError, match=r"smoke prediction mismatch .* serves version 2"):
        verifier.smoke(lin, "1", smoke_repo)
    # both versions really answer differently (the versioned endpoints, as a client pinned to one would call)
    outs = {}
    for version in ("1", "2"):
        body = {"inputs": [{"name": "x", "shape": [3, 1], "datatype": "FP64", "data": [1.0, 2.0, 5.0]}]}
        answer = requests.post(f"{mlserver.url}/v2/models/lin/versions/{version}/infer", json=body, timeout=5).json()
        assert answer["model_version"] == version
        outs[version] = [round(y, 6) for y in answer["outputs"][0]["data"]]
    assert outs == {"1": expected("1"), "2": expected("2")}
    assert "serving version 2 (expected 2)" in check_serving(verifier, lin, None, None, smoke_repo)
    with pytest.raises(StepFailed, match="version mismatch: serving 2, expected 1") as held:
        check_serving(verifier, lin, None, "1", smoke_repo)
    assert held.value.hold


def test_mlserver_model_that_failed_to_load_is_not_ready(mlserver: Running) -> None:
    verifier = Verifier(poll_s=0.1)
    write_broken_mlserver_model(mlserver.workdir)
    answer = requests.post(f"{mlserver.url}/v2/repository/models/broken/load", timeout=30)
    assert answer.status_code == 500  # MLServer 1.7 answers a failed load with a traceback; the server stays up
    broken = mlserver.replica("broken", "v2")
    check = verifier.adapter(broken).ready(broken)
    assert not check.ok and "HTTP 404" in check.why
    assert verifier.load_failed(broken) == "version 1: UNAVAILABLE: load failed (the server gave no reason)"
    with pytest.raises(ActionError, match="failed to load"):
        verifier.wait_available(broken, timeout_s=5)
    assert verifier.adapter(mlserver.replica("lin", "v2")).ready(mlserver.replica("lin", "v2")).ok  # others serve on


@pytest.mark.parametrize("protocol", ["kserve-v1", "v2"])
def test_kserve_ready_and_smoke_tell_the_versions_apart(
    kserve: tuple[str, Running], protocol: str, smoke_repo: Path
) -> None:
    version, server = kserve
    other = "1" if version == "2" else "2"
    verifier = Verifier(poll_s=0.1)
    lin = server.replica("lin", protocol)
    _wait_ready(verifier, lin)
    assert verifier.wait_available(lin, timeout_s=10) is None  # ready, and KServe cannot say which version
    assert verifier.served_version(lin) is None
    assert verifier.predict(lin, SMOKE_INSTANCES) == expected(version)
    verifier.smoke(lin, version, smoke_repo)
    with pytest.raises(ActionError, match="smoke prediction mismatch"):
        verifier.smoke(lin, other, smoke_repo)
    # after a restart: verified by the smoke prediction alone, and held when it is another version's
    assert "smoke prediction of expected version" in check_serving(verifier, lin, None, version, smoke_repo)
    with pytest.raises(StepFailed, match="smoke prediction failed") as held:
        check_serving(verifier, lin, None, other, smoke_repo)
    assert held.value.hold
    with pytest.raises(StepFailed, match=r"cannot verify: protocol .* reports no version") as guess:
        check_serving(verifier, lin, None, None, None)  # nothing to compare against: never restored on a guess
    assert guess.value.hold


@pytest.mark.parametrize("protocol", ["kserve-v1", "v2"])
def test_kserve_model_that_failed_to_load_is_not_ready(kserve: tuple[str, Running], protocol: str) -> None:
    _, server = kserve
    verifier = Verifier(poll_s=0.1)
    _wait_ready(verifier, server.replica("lin", protocol))
    broken = server.replica("broken", protocol)
    check = verifier.adapter(broken).ready(broken)
    assert not check.ok and "Model with name broken does not exist" in check.why
    with pytest.raises(ActionError, match="not AVAILABLE"):
        verifier.wait_available(broken, timeout_s=0.5)
    assert "failed to load" in (server.workdir / "server.log").read_text()
