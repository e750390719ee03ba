"""Faults made by the model inside real MLServer 1.7.1 and KServe 0.16.0 (issue #16), on loopback
host processes: the model leaks, raises on a share of requests, slows down, or fails to load a
version, switched by the file the testbed writes (testbed/servers/faults.py). What the watcher
must see is checked with its own parts: the shipped packs classify the servers' own log lines,
and the verifier holds a replica whose reload fell back to the old version."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from testbed.loadgen import LoadGenerator
from testbed.ports import LOOPBACK, free_port
from testbed.servers.models import SMOKE_INSTANCES, expected, write_smoke_repo
from testbed.services import Prometheus, ScrapeTarget
from tests.integration.running import foresight_series
from tests.integration.test_protocols_real import Running, _start, _stop
from watcher.actions.verify import Verifier
from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.model import LogRecord, Target
from watcher.playbook.base import StepFailed
from watcher.playbook.verification import check_serving
from watcher.rulepack.compile import load_packs
from watcher.rules import SHIPPED_RULES

pytestmark = pytest.mark.integration

V2_BODY = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}]}


def _switch(path: Path, spec: dict[str, object]) -> None:
    path.write_text(json.dumps(spec))
    stamp = time.time() + 1
    os.utime(path, (stamp, stamp))  # a new modification time, so the model re-reads it at once


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _predicts(log: Path) -> set[str]:
    """What the shipped packs make of the server's own log (as the watcher's log source would)."""
    engine = Engine(load_packs([SHIPPED_RULES]), ManualClock())
    out: set[str] = set()
    for line in log.read_text(errors="replace").splitlines():
        out |= {p.value for p in engine.classify(LogRecord(Target("srv"), 0.0, line)).predicts}
    return out


METRICS_PORTS: dict[str, int] = {}  # server url -> its metrics port (MLServer serves /metrics apart)


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Path]]:
    http, grpc, metrics = free_port(), free_port(), free_port()
    workdir = tmp_path_factory.mktemp("mlserver-faults")
    faults = workdir / "faults.json"
    args = ["mlserver", "--workdir", str(workdir), "--http-port", str(http)]
    server = _start([*args, "--grpc-port", str(grpc), "--metrics-port", str(metrics)], http, workdir, faults)
    METRICS_PORTS[server.url] = metrics
    Verifier(poll_s=0.1).wait_available(server.replica("lin", "v2"), timeout_s=30)
    yield server, faults
    _stop(server.proc)


def test_mlserver_metrics_give_the_foresight_packs_error_ratio_and_latency(
    mlserver: tuple[Running, Path], tmp_path: Path
) -> None:
    """The shipped foresight pack's own queries, through a real Prometheus scraping the real MLServer
    (its replica label as deploy/prometheus/prometheus.yml sets it): the error ratio of a model that
    fails half its requests, and a p99 latency, for that replica."""
    server, faults = mlserver
    prom = Prometheus(
        tmp_path / "prom",
        free_port(),
        [ScrapeTarget("mlserver", f"{LOOPBACK}:{METRICS_PORTS[server.url]}", labels={"replica": "ml-0"})],
        scrape_interval_s=1.0,
    )
    with prom:
        _switch(faults, {"error_ratio": 0.5})
        try:
            deadline = time.monotonic() + 40
            got: dict[str, float] = {}
            while time.monotonic() < deadline and len(got) < 2:
                _infer_v2(server.url, 4)
                got = foresight_series(prom.url, "ml-0")
                time.sleep(1.0)
        finally:
            _switch(faults, {})
    assert set(got) == {"error_ratio", "latency_p99_seconds"}, got
    assert 0.3 <= got["error_ratio"] <= 0.7, got
    assert 0 < got["latency_p99_seconds"] < 5, got


def _infer_v2(url: str, n: int) -> list[int]:
    return [requests.post(f"{url}/v2/models/lin/infer", json=V2_BODY, timeout=10).status_code for _ in range(n)]


def test_mlserver_model_that_raises_answers_500_and_its_log_says_so(mlserver: tuple[Running, Path]) -> None:
    server, faults = mlserver
    _switch(faults, {"error_ratio": 0.5})
    try:
        codes = _infer_v2(server.url, 10)
    finally:
        _switch(faults, {})
    assert sorted(codes) == [200] * 5 + [500] * 5
    assert _infer_v2(server.url, 3) == [200] * 3  # switched off: served again
    log = server.workdir / "server.log"
    assert "ModelFault" in log.read_text()
    assert "http_5xx" in _predicts(log)  # uvicorn's 500 access line and "Exception in ASGI application"


def test_the_testbeds_load_speaks_v2_to_real_mlserver_and_judges_its_answers(mlserver: tuple[Running, Path]) -> None:
    """The chaos load, in the Open Inference Protocol: every answer checked against the versions'
    expected outputs (version 2 served), and a model failing half its requests seen as such."""
    server, faults = mlserver
    want = {v: expected(v) for v in ("1", "2")}
    load = LoadGenerator(server.url, "lin", 10, 2.0, 5.0, SMOKE_INSTANCES, want, protocol="v2").run()
    assert load.requests == 20 and load.failed == 0 and load.version_counts == {"2": 20}
    _switch(faults, {"error_ratio": 0.5})
    try:
        load = LoadGenerator(server.url, "lin", 10, 2.0, 5.0, SMOKE_INSTANCES, want, protocol="v2").run()
    finally:
        _switch(faults, {})
    assert load.failed == 10 and load.status_counts.get("500") == 10, load.status_counts


def test_mlserver_model_that_leaks_grows_the_server_process(mlserver: tuple[Running, Path]) -> None:
    server, faults = mlserver
    before = _rss_mb(server.proc.pid)
    _switch(faults, {"leak_mb_per_request": 4})
    try:
        assert _infer_v2(server.url, 10) == [200] * 10
    finally:
        _switch(faults, {})
    assert _rss_mb(server.proc.pid) - before >= 30  # 40 MB kept, written


def test_mlserver_slow_model_delays_answers_while_readiness_stays_quick(mlserver: tuple[Running, Path]) -> None:
    server, faults = mlserver
    _switch(faults, {"delay_s": 0.6})
    try:
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            slow = pool.submit(_infer_v2, server.url, 1)
            time.sleep(0.1)
            t0 = time.monotonic()
            ready = requests.get(f"{server.url}/v2/models/lin/ready", timeout=5)
            ready_s = time.monotonic() - t0
            assert slow.result() == [200]
            infer_s = time.monotonic() - started
    finally:
        _switch(faults, {})
    assert ready.status_code == 200 and ready_s < 0.3
    assert infer_s >= 0.6


def test_mlserver_reload_whose_new_version_fails_serves_the_old_one_and_is_held(
    mlserver: tuple[Running, Path], tmp_path: Path
) -> None:
    """A rollout gone wrong, by the real server: the reload's version 2 fails to load, and MLServer
    answers the unversioned endpoint with version 1 while its repository index still says 2 READY.
    A version check alone would pass; the stored smoke prediction of version 2 does not, and the
    watcher's check holds the replica drained."""
    server, faults = mlserver
    repo = write_smoke_repo(tmp_path / "smoke")
    _switch(faults, {"fail_load": ["2"]})
    try:
        assert requests.post(f"{server.url}/v2/repository/models/lin/unload", timeout=10).status_code == 200
        assert requests.post(f"{server.url}/v2/repository/models/lin/load", timeout=30).status_code == 500
        answer = requests.post(f"{server.url}/v2/models/lin/infer", json=V2_BODY, timeout=10).json()
        assert answer["model_version"] == "1"
        assert Verifier().served_version(server.replica("lin", "v2")) == "2"  # what the index claims
        with pytest.raises(StepFailed, match=r"smoke prediction mismatch for expected version 2") as held:
            check_serving(Verifier(poll_s=0.1), server.replica("lin", "v2"), "2", None, repo)
        assert held.value.hold
        assert (
            "load_failure" in _predicts(server.workdir / "server.log")
            or "ModelFault" in (server.workdir / "server.log").read_text()
        )
    finally:
        _switch(faults, {})
        requests.post(f"{server.url}/v2/repository/models/lin/load", timeout=30)


@pytest.fixture(scope="module")
def kserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Path]]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("kserve-faults")
    faults = workdir / "faults.json"
    server = _start(["kserve", "--http-port", str(port), "--version", "2"], port, workdir, faults)
    Verifier(poll_s=0.1).wait_available(server.replica("lin", "kserve-v1"), timeout_s=30)
    yield server, faults
    _stop(server.proc)


def test_kserve_model_that_raises_or_leaks(kserve: tuple[Running, Path]) -> None:
    server, faults = kserve
    v1 = f"{server.url}/v1/models/lin:predict"
    _switch(faults, {"error_ratio": 0.5})
    try:
        codes = [requests.post(v1, json={"instances": [[1.0]]}, timeout=10).status_code for _ in range(10)]
    finally:
        _switch(faults, {})
    assert sorted(codes) == [200] * 5 + [500] * 5
    assert "ModelFault" in (server.workdir / "server.log").read_text()
    before = _rss_mb(server.proc.pid)
    _switch(faults, {"leak_mb_per_request": 4})
    try:
        assert all(requests.post(v1, json={"instances": [[1.0]]}, timeout=10).ok for _ in range(10))
    finally:
        _switch(faults, {})
    assert _rss_mb(server.proc.pid) - before >= 30


def test_kserve_metrics_give_the_foresight_packs_latency_and_no_error_ratio(
    kserve: tuple[Running, Path], tmp_path: Path
) -> None:
    """KServe's own predict-time histogram (kserve/metrics.py, on its HTTP port) through a real
    Prometheus: the shipped latency query sees a model slowed by 0.2 s; KServe counts no failures,
    so no error ratio comes out of it (its 5xx are read from its log lines)."""
    server, faults = kserve
    port = server.url.rsplit(":", 1)[1]
    prom = Prometheus(
        tmp_path / "prom",
        free_port(),
        [ScrapeTarget("kserve", f"{LOOPBACK}:{port}", labels={"replica": "ks-0"})],
        scrape_interval_s=1.0,
    )
    v1 = f"{server.url}/v1/models/lin:predict"
    with prom:
        _switch(faults, {"delay_s": 0.2})
        try:
            deadline = time.monotonic() + 40
            got: dict[str, float] = {}
            while time.monotonic() < deadline and not got.get("latency_p99_seconds", 0) >= 0.15:
                assert all(requests.post(v1, json={"instances": [[1.0]]}, timeout=10).ok for _ in range(3))
                got = foresight_series(prom.url, "ks-0")
                time.sleep(1.0)
        finally:
            _switch(faults, {})
    assert set(got) == {"latency_p99_seconds"}, got
    assert 0.15 <= got["latency_p99_seconds"] < 5, got


def test_kserve_version_that_fails_to_load_ends_the_server_and_its_log_says_why(tmp_path: Path) -> None:
    """KServe will not serve with no model ready: a new version that fails to load ends the server
    (in a container: it exits, Docker restarts it, and it fails again), and says so in its log."""
    faults = tmp_path / "faults.json"
    _switch(faults, {"fail_load": ["2"]})
    port = free_port()
    with pytest.raises(AssertionError, match="server did not start") as failed:
        _start(["kserve", "--http-port", str(port), "--version", "2"], port, tmp_path / "k", faults)
    log = (tmp_path / "k" / "server.log").read_text()
    assert "artifact unreadable" in log and "NoModelReady" in str(failed.value)
    assert "load_failure" in _predicts(tmp_path / "k" / "server.log")
