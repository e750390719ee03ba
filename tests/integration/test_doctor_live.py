"""`watcher doctor` against the real testbed: Docker, Nginx, HAProxy, Prometheus and Alertmanager.

A good configuration (the one `Running` gives `watcher run`) exits 0; a label the containers lack and
an unreachable Alertmanager are each one named problem line and exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from testbed.loadgen import LoadGenerator
from testbed.ports import free_port
from testbed.replicas import TESTBED_LABEL
from testbed.stack import Testbed, TestbedConfig

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bed(docker_client: docker.DockerClient) -> Iterator[Testbed]:
    with Testbed(TestbedConfig(replicas=2, weights=(2, 1), with_haproxy=True)) as bed:
        yield bed


def doctor(bed: Testbed, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    assert bed.nginx is not None and bed.alertmanager is not None and bed.prometheus is not None
    n = bed.nginx.workdir
    settings = {
        "WATCHER_STORE": str(tmp_path / "watcher.db"),
        "WATCHER_LABEL_SELECTOR": json.dumps([f"{TESTBED_LABEL}={bed.run_id}"]),
        "WATCHER_PROMETHEUS_URL": bed.prometheus.url,
        "WATCHER_LB": "nginx",
        "WATCHER_NGINX_UPSTREAMS_FILE": str(n / "upstreams.conf"),
        "WATCHER_NGINX_PID_FILE": str(n / "nginx.master.pid"),
        "WATCHER_NGINX_CONF": str(n / "nginx.conf"),
        "WATCHER_NGINX_BINARY": bed.nginx.binary_path(),
        "WATCHER_MODEL_REPO": str(bed.model_repo),
        "WATCHER_ALERTMANAGER_URL": f"http://127.0.0.1:{bed.alertmanager.port}",
        "WATCHER_API_TOKEN": "doctor-secret-token",
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    return subprocess.run(
        [sys.executable, "-m", "watcher.cli", "doctor"],
        env={**clean, "PYTHONPATH": str(REPO), **settings, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("problem: ")]


def test_a_good_configuration_exits_0(bed: Testbed, tmp_path: Path) -> None:
    load = LoadGenerator(bed.url, bed.config.model, rate_per_s=10, duration_s=60, timeout_s=5, instances=[1.0])
    load.start()  # the request series exist once Prometheus has scraped traffic
    try:
        deadline = time.monotonic() + 30
        # both replicas' request series: Nginx's weights send the first requests to one of them
        want = "ok: series error_ratio: returned 2 series"
        while want not in (result := doctor(bed, tmp_path)).stdout and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        load.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert problems(result) == [] and "Traceback" not in result.stderr
    out = result.stdout
    for replica in bed.replicas:
        assert f"ok: container local/{replica.name} (running, healthy): can be remediated" in out
        assert f"has {replica.address} at weight" in out  # Nginx knows each replica's upstream
    assert "ok: series error_ratio: returned 2 series" in out and "ok: prometheus (" in out, out
    assert "series memory_working_set_bytes: returned 0 series" in out  # no cAdvisor here: a warning, not a problem
    assert "ok: alertmanager (" in out and "master PID" in out and "doctor-secret-token" not in out
    assert list(tmp_path.iterdir()) == []  # read-only: no store, no lock file


def test_haproxy_socket_answers(bed: Testbed, tmp_path: Path) -> None:
    assert bed.haproxy is not None
    result = doctor(
        bed,
        tmp_path,
        WATCHER_LB="haproxy",
        WATCHER_HAPROXY_SOCKET=str(bed.haproxy.socket_path),
        WATCHER_HAPROXY_BACKEND=bed.haproxy.backend,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok: haproxy admin socket {bed.haproxy.socket_path}: HAProxy " in result.stdout
    assert f"ok: haproxy backend {bed.haproxy.backend}: 2 server(s)" in result.stdout


def test_a_missing_label_and_an_unreachable_alertmanager_are_named(bed: Testbed, tmp_path: Path) -> None:
    # the replicas carry watcher.model; a fleet labelled otherwise lacks the label this watcher reads
    unlabelled = doctor(bed, tmp_path, WATCHER_MODEL_LABEL="example.com/model")
    assert unlabelled.returncode == 1
    assert sorted(problems(unlabelled)) == sorted(
        f"problem: container local/{r.name} (running, healthy): watched but cannot be remediated: "
        "missing label example.com/model (containers need both labels to be drained, restarted and verified)"
        for r in bed.replicas
    )
    port = free_port()
    no_am = doctor(bed, tmp_path, WATCHER_ALERTMANAGER_URL=f"http://127.0.0.1:{port}")
    assert no_am.returncode == 1 and "Traceback" not in no_am.stderr
    assert problems(no_am) == [
        f"problem: alertmanager (http://127.0.0.1:{port}): not ready: connection refused or reset"
    ]
