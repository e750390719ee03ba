"""Simulator replicas as real Docker containers: host networking, loopback ports, real limits.

Each replica is one container of the simulator image with a real memory limit (so a leak ends
in a real OOM kill), a restart policy and the health check TF Serving users actually write
(``GET /v1/models/<name>``). Every replica gets its own writable state directory, which is
how a fault such as "come back with an older model version" survives a restart.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests
from docker.models.containers import Container

TESTBED_LABEL = "serving-testbed"


def _session() -> requests.Session:
    """Ignore proxy variables: testbed traffic goes to 127.0.0.1 only."""
    session = requests.Session()
    session.trust_env = False
    return session


@dataclass
class ReplicaSpec:
    name: str
    rest_port: int
    admin_port: int
    model: str
    model_repo: Path
    state_dir: Path
    image: str
    memory_limit: str = "256m"
    restart_policy: str = "always"
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    health_interval_s: float = 2.0
    health_timeout_s: float = 2.0
    health_retries: int = 3
    seed: int = 0
    engine: str = "local"  # the Docker engine it runs on (the watcher's engine name for it)
    server: str = "tfsim"  # or a real one: mlserver, kserve (testbed/oip_replicas.py)
    # TF Serving retries a failed load 5 times a minute apart; the testbed shortens that so a
    # load failure reaches END within seconds (same log lines, same states).
    extra_args: tuple[str, ...] = ("--max_num_load_retries=1", "--load_retry_interval_micros=1000000")


class Replica:
    """A running simulator container and the loopback URLs that reach it."""

    def __init__(self, spec: ReplicaSpec, container: Container) -> None:
        self.spec = spec
        self.container = container
        self.http = _session()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> str:
        """What the watcher calls it: ``<engine>/<container name>`` (its target key)."""
        return f"{self.spec.engine}/{self.name}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.spec.rest_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.address}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.spec.admin_port}"

    @property
    def metrics_address(self) -> str:
        """Where Prometheus scrapes it (MLServer has a port of its own for metrics)."""
        return self.address

    @property
    def metrics_path(self) -> str:
        return "/monitoring/prometheus/metrics"

    # -- what a client sees -------------------------------------------------------------
    def model_status(self, timeout_s: float = 2.0) -> dict[str, Any]:
        r = self.http.get(f"{self.rest_url}/v1/models/{self.spec.model}", timeout=timeout_s)
        result: dict[str, Any] = r.json()
        return result

    def serving_version(self, timeout_s: float = 2.0) -> str | None:
        """The AVAILABLE version, or None while nothing is available (or the replica is down)."""
        try:
            status = self.model_status(timeout_s)
        except (requests.RequestException, ValueError):
            return None
        for entry in status.get("model_version_status", []):
            if entry.get("state") == "AVAILABLE":
                return str(entry.get("version"))
        return None

    def wait_available(self, timeout_s: float = 60.0, version: str | None = None) -> str:
        deadline = time.monotonic() + timeout_s
        seen: str | None = None
        while time.monotonic() < deadline:
            seen = self.serving_version(timeout_s=1.0)
            if seen is not None and (version is None or seen == version):
                return seen
            time.sleep(0.2)
        raise TimeoutError(
            f"replica {self.name}: model {self.spec.model} not AVAILABLE"
            f"{' at version ' + version if version else ''} within {timeout_s}s (serving: {seen})"
        )

    def predict(self, instances: list[Any], timeout_s: float = 3.0) -> requests.Response:
        return self.http.post(
            f"{self.rest_url}/v1/models/{self.spec.model}:predict",
            data=json.dumps({"instances": instances}),
            timeout=timeout_s,
        )

    # -- faults through the simulator's admin port ----------------------------------------
    def set_faults(self, faults: dict[str, dict[str, Any]]) -> None:
        r = self.http.post(f"{self.admin_url}/faults", data=json.dumps(faults), timeout=2.0)
        r.raise_for_status()

    def clear_faults(self) -> None:
        self.http.delete(f"{self.admin_url}/faults", timeout=2.0).raise_for_status()

    def clear_fault(self, name: str) -> None:
        self.http.delete(f"{self.admin_url}/faults/{name}", timeout=2.0)

    def memory_mb(self) -> float | None:
        """The server's resident memory (None while it is down)."""
        try:
            return float(self.http.get(f"{self.admin_url}/status", timeout=0.8).json()["rss_bytes"]) / 2**20
        except (requests.RequestException, ValueError, KeyError):
            return None

    # -- what Docker sees -----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        self.container.reload()
        result: dict[str, Any] = self.container.attrs["State"]
        return result

    def restart_count(self) -> int:
        self.container.reload()
        return int(self.container.attrs.get("RestartCount", 0))

    def logs(self) -> str:
        raw: bytes = self.container.logs(stdout=True, stderr=True)
        return raw.decode("utf-8", errors="replace")

    def kill(self, signal: str = "SIGKILL") -> None:
        self.container.kill(signal=signal)


def start_replica(client: docker.DockerClient, spec: ReplicaSpec) -> Replica:
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    environment = {
        "MODEL_NAME": spec.model,
        "MODEL_BASE_PATH": "/models",
        "REST_PORT": str(spec.rest_port),
        "GRPC_PORT": str(spec.rest_port - 1),
        "ADMIN_PORT": str(spec.admin_port),
    }
    if spec.faults:
        environment["SIM_FAULTS"] = json.dumps(spec.faults)
    ns = 1_000_000_000
    container = client.containers.run(
        spec.image,
        name=spec.name,
        detach=True,
        network_mode="host",
        mem_limit=spec.memory_limit,
        memswap_limit=spec.memory_limit,
        restart_policy={"Name": spec.restart_policy} if spec.restart_policy != "no" else None,
        environment=environment,
        labels=spec.labels,
        volumes={
            str(spec.model_repo): {"bind": "/models", "mode": "ro"},
            str(spec.state_dir): {"bind": "/var/lib/tfsim", "mode": "rw"},
        },
        healthcheck={
            "test": [
                "CMD-SHELL",
                f"curl -fsS --max-time {spec.health_timeout_s:g} "
                f"http://127.0.0.1:{spec.rest_port}/v1/models/{spec.model} || exit 1",
            ],
            "interval": int(spec.health_interval_s * ns),
            "timeout": int((spec.health_timeout_s + 1) * ns),
            "retries": spec.health_retries,
            "start_period": 5 * ns,
        },
        command=[f"--seed={spec.seed}", *spec.extra_args],
    )
    return Replica(spec, container)


def remove_testbed_containers(client: docker.DockerClient, run_id: str | None = None) -> int:
    """Remove the containers a testbed run created (all runs when run_id is None)."""
    label = TESTBED_LABEL if run_id is None else f"{TESTBED_LABEL}={run_id}"
    removed = 0
    for container in client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)
        removed += 1
    return removed
