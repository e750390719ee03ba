"""Real MLServer and KServe as Docker containers (issue #16), from the image built offline out of
the host's wheelhouse (testbed/images.py): host networking, bound to 127.0.0.1, a memory limit,
the watcher's labels. The watcher's own parts see them as they would in a fleet: the inventory
reads their labels and protocol, the verifier checks ready, version and the stored smoke answer,
the cgroup reader sees their memory, and a model that leaks until the limit is killed by the kernel
(OOMKilled), not by the testbed."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from testbed.images import OIP_WHEELHOUSE, ensure_oip_image
from testbed.ports import LOOPBACK, free_port
from testbed.replicas import TESTBED_LABEL, remove_testbed_containers
from testbed.servers.models import write_smoke_repo
from watcher.actions.base import Replica
from watcher.actions.verify import Verifier
from watcher.model import Target
from watcher.playbook.verification import check_serving
from watcher.sources.cgroup_memory import locate

pytestmark = pytest.mark.integration

if not any(OIP_WHEELHOUSE.glob("pip-*.whl")):
    why = f"no wheelhouse at {OIP_WHEELHOUSE}: run scripts/install-oip-servers.sh"
    if os.environ.get("CI"):  # `make integration` makes it: in CI a missing server is a failure
        raise RuntimeError(why)
    pytest.skip(why, allow_module_level=True)


@pytest.fixture(scope="module")
def image(docker_client: docker.DockerClient) -> str:
    return ensure_oip_image(docker_client).tag


@pytest.fixture
def run_id(docker_client: docker.DockerClient) -> Iterator[str]:
    rid = uuid.uuid4().hex[:10]
    yield rid
    remove_testbed_containers(docker_client, rid)


def _run(
    client: docker.DockerClient, image: str, run_id: str, args: list[str], port: int, faults_dir: Path, mem: str
) -> docker.models.containers.Container:
    labels = {
        TESTBED_LABEL: run_id,
        "watcher.enable": "true",
        "watcher.service": "lin",
        "watcher.upstream": f"{LOOPBACK}:{port}",
        "watcher.model": "lin",
        "watcher.protocol": "v2",
    }
    return client.containers.run(
        image,
        args,
        name=f"oip-{run_id}-{args[0]}",
        detach=True,
        network_mode="host",
        mem_limit=mem,
        memswap_limit=mem,
        labels=labels,
        environment={"TESTBED_FAULTS": "/faults/faults.json"},
        volumes={str(faults_dir): {"bind": "/faults", "mode": "ro"}},
    )


def _wait_up(container: docker.models.containers.Container, replica: Replica, timeout_s: float = 90) -> None:
    verifier = Verifier(poll_s=0.2)
    deadline = time.monotonic() + timeout_s
    while not verifier.adapter(replica).ready(replica).ok:
        container.reload()
        if container.status != "running" or time.monotonic() > deadline:
            raise AssertionError(f"{container.name} not ready:\n{container.logs()[-3000:].decode(errors='replace')}")
        time.sleep(0.3)


def _replica(port: int, protocol: str = "v2") -> Replica:
    upstream = f"{LOOPBACK}:{port}"
    return Replica(Target(f"oip-{port}", service="lin"), upstream, f"http://{upstream}", "lin", protocol=protocol)


def test_mlserver_in_docker_is_verified_and_its_leak_is_killed_by_the_kernel(
    docker_client: docker.DockerClient, image: str, run_id: str, tmp_path: Path
) -> None:
    http, grpc, metrics = free_port(), free_port(), free_port()
    args = ["mlserver", "--workdir", "/tmp/mlserver", "--http-port", str(http)]
    args += ["--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    container = _run(docker_client, image, run_id, args, http, tmp_path, "512m")
    replica = _replica(http)
    _wait_up(container, replica)
    repo = write_smoke_repo(tmp_path / "smoke")
    assert "serving version 2 (expected 2)" in check_serving(Verifier(poll_s=0.1), replica, None, None, repo)
    files = locate(Path("/sys/fs/cgroup"), container.id)
    assert files is not None
    at_rest = files.read()["memory_working_set_bytes"]
    assert files.read()["memory_limit_bytes"] == 512 * 2**20
    (tmp_path / "faults.json").write_text(json.dumps({"leak_mb_per_request": 16}))
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}]}
    grown = at_rest
    for _ in range(60):
        try:
            requests.post(f"http://{LOOPBACK}:{http}/v2/models/lin/infer", json=body, timeout=10)
        except requests.RequestException:
            break  # the kernel killed it mid-request
        try:
            grown = max(grown, files.read()["memory_working_set_bytes"])
        except OSError:
            break
    container.reload()
    deadline = time.monotonic() + 30
    while container.status == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        container.reload()
    assert container.attrs["State"]["OOMKilled"], container.attrs["State"]
    assert grown - at_rest > 100 * 2**20  # the cgroup files saw the model's memory climb


def test_kserve_in_docker_is_verified_by_its_smoke_answer(
    docker_client: docker.DockerClient, image: str, run_id: str, tmp_path: Path
) -> None:
    port = free_port()
    container = _run(
        docker_client, image, run_id, ["kserve", "--http-port", str(port), "--version", "1"], port, tmp_path, "512m"
    )
    replica = _replica(port, "kserve-v1")
    _wait_up(container, replica)
    repo = write_smoke_repo(tmp_path / "smoke")
    assert "smoke" in check_serving(Verifier(poll_s=0.1), replica, None, "1", repo).lower()
    logs = container.logs().decode(errors="replace")
    assert f"{LOOPBACK}:{port}" in logs or "Uvicorn running" in logs
