"""Real MLServer and KServe replicas in the testbed, driven with the simulator's fault vocabulary.

The chaos benchmark and the stack speak one language of faults (``leak``, ``error_ramp``, ``hang``,
``stale_on_restart``, ``crash``...). For the simulator they go to its admin port; a real server has
none, so here they become the model-made fault switch its model reads (:mod:`testbed.servers.faults`,
a JSON file in the replica's state directory, mounted read-only at ``/faults``). A fault no model
can make is refused with the fault's name, never silently dropped. What a client sees and what the
ground truth says come from the server itself: its readiness endpoint, and the version a smoke
prediction's answers belong to (the two versions answer differently).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests

from testbed.loadgen import outputs_match, v2_predictions, v2_request
from testbed.replicas import Replica, ReplicaSpec
from testbed.servers.models import SMOKE_INSTANCES, VERSIONS, expected
from watcher.sources.cgroup_memory import locate

SERVERS = ("mlserver", "kserve")
PROTOCOL = {"mlserver": "v2", "kserve": "kserve-v1"}  # what each serves its clients and the watcher
MODEL = "lin"
FAULTS_FILE = "faults.json"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ServedModel:
    """What clients of a testbed send and get back: the model, the request's rows, each version's
    answers and the client protocol (``testbed.loadgen``'s ``protocol``)."""

    name: str
    instances: list[Any]
    predictions: dict[str, list[Any]]
    protocol: str


def served_model(server: str) -> ServedModel:
    return ServedModel(MODEL, SMOKE_INSTANCES, {v: expected(v) for v in VERSIONS}, PROTOCOL[server])


def model_switch(faults: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The simulator's faults as the model's switch; ValueError names a fault a model cannot make."""
    switch: dict[str, Any] = {}
    for name, p in faults.items():
        if name == "leak":
            switch["leak_mb_per_s"] = float(p["mb_per_s"])
            if "max_mb" in p:
                switch["leak_max_mb"] = float(p["max_mb"])
        elif name == "error_ramp":
            start, end, over = float(p.get("start", 0.0)), float(p["end"]), float(p.get("over_s", 60))
            switch.update(error_ratio=start, error_ramp_per_s=(end - start) / max(over, 1e-9), error_max=end)
        elif name == "errors":
            switch["error_ratio"] = float(p.get("ratio", p.get("rate", 1.0)))
        elif name == "latency":
            switch["delay_s"] = float(p.get("ms", 0.0)) / 1000.0
        elif name == "hang":
            switch["hang"] = True
        elif name == "stale_on_restart":
            switch["stale_on_restart"] = str(p["version"])
        elif name in ("crash", "noise"):
            continue  # the testbed kills the process itself; the server's own access log is the noise
        else:
            raise ValueError(f"fault {name!r}: the MLServer/KServe models cannot make it (testbed/oip_replicas.py)")
    return switch


class OipReplica(Replica):
    """A real MLServer or KServe container; faults through the switch file, truth from its answers."""

    def __init__(self, spec: ReplicaSpec, container: Any) -> None:
        super().__init__(spec, container)
        self.model = served_model(spec.server)
        self._faults: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @property
    def metrics_address(self) -> str:
        return f"127.0.0.1:{self.spec.admin_port}" if self.spec.server == "mlserver" else self.address

    @property
    def metrics_path(self) -> str:
        return "/metrics"

    def model_status(self, timeout_s: float = 2.0) -> dict[str, Any]:
        r = self.http.get(f"{self.rest_url}/v2/models/{MODEL}/ready", timeout=timeout_s)
        return {"ready": r.status_code == 200}

    def serving_version(self, timeout_s: float = 2.0) -> str | None:
        """The version whose answers a smoke prediction gets (None while not ready or down)."""
        try:
            r = self.predict(SMOKE_INSTANCES, timeout_s)
            got = v2_predictions(r.json()) if self.model.protocol == "v2" else r.json().get("predictions")
        except (requests.RequestException, ValueError, AttributeError):
            return None
        if r.status_code != 200 or got is None:
            return None
        return next((v for v, want in self.model.predictions.items() if outputs_match(got, want)), None)

    def predict(self, instances: list[Any], timeout_s: float = 3.0) -> requests.Response:
        if self.model.protocol == "v2":
            url, body = f"{self.rest_url}/v2/models/{MODEL}/infer", v2_request(instances)
        else:
            url, body = f"{self.rest_url}/v1/models/{MODEL}:predict", {"instances": instances}
        return self.http.post(url, json=body, timeout=timeout_s)

    # -- faults through the model's switch -------------------------------------------------
    def set_faults(self, faults: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            merged = {**self._faults, **faults}
            switch = model_switch(merged)  # refuses before anything is written
            self._faults = merged
            self._write(switch)
        if "crash" in faults:
            threading.Timer(float(faults["crash"].get("after_s", 0.0)), self._crash).start()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = {}
            self._write({})

    def clear_fault(self, name: str) -> None:
        with self._lock:
            self._faults.pop(name, None)
            self._write(model_switch(self._faults))

    def _write(self, switch: dict[str, Any]) -> None:
        path = self.spec.state_dir / FAULTS_FILE
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps(switch))
        staging.replace(path)  # atomic: the model never reads half a switch

    def _crash(self) -> None:
        """The server process dies at once (as a segfault in native code would); Docker's restart
        policy brings it back. Its PID is the container's main process, which this testbed started."""
        pid = int(self.state().get("Pid") or 0)
        if pid > 0:
            os.kill(pid, signal.SIGKILL)

    def memory_mb(self) -> float | None:
        files = locate(CGROUP_ROOT, str(self.container.id))
        try:
            return None if files is None else files.read()["memory_working_set_bytes"] / 2**20
        except (OSError, KeyError):
            return None


def server_command(spec: ReplicaSpec) -> list[str]:
    if spec.server == "mlserver":
        return [
            "mlserver", "--workdir", "/tmp/mlserver", "--http-port", str(spec.rest_port),
            "--grpc-port", str(spec.rest_port - 1), "--metrics-port", str(spec.admin_port),
        ]  # fmt: skip
    return ["kserve", "--http-port", str(spec.rest_port), "--version", "2"]


def start_oip_replica(client: docker.DockerClient, spec: ReplicaSpec) -> OipReplica:
    """``spec.image`` is the OIP image (:func:`testbed.images.ensure_oip_image`); ``rest_port - 1``
    must be free too (MLServer's gRPC port), ``admin_port`` is MLServer's metrics port."""
    if spec.server not in SERVERS:
        raise ValueError(f"server must be one of {SERVERS}, got {spec.server!r}")
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    (spec.state_dir / FAULTS_FILE).write_text(json.dumps(model_switch(spec.faults)))
    ns = 1_000_000_000
    container = client.containers.run(
        spec.image,
        server_command(spec),
        name=spec.name,
        detach=True,
        network_mode="host",
        mem_limit=spec.memory_limit,
        memswap_limit=spec.memory_limit,
        restart_policy={"Name": spec.restart_policy} if spec.restart_policy != "no" else None,
        environment={"TESTBED_FAULTS": f"/faults/{FAULTS_FILE}"},
        labels=spec.labels,
        volumes={str(spec.state_dir): {"bind": "/faults", "mode": "ro"}},
        healthcheck={
            # the readiness endpoint of the Open Inference Protocol, which both servers serve
            "test": [
                "CMD-SHELL",
                f"curl -fsS --max-time {spec.health_timeout_s:g} "
                f"http://127.0.0.1:{spec.rest_port}/v2/health/ready || exit 1",
            ],
            "interval": int(spec.health_interval_s * ns),
            "timeout": int((spec.health_timeout_s + 1) * ns),
            "retries": spec.health_retries,
            "start_period": 20 * ns,
        },
    )
    replica = OipReplica(spec, container)
    replica._faults = dict(spec.faults)
    return replica
