"""Integration tests: the real nginx, prometheus, alertmanager and haproxy binaries on 127.0.0.1.

Backends are tiny stdlib HTTP servers so these tests need no Docker; they check the
generated configs, runtime weight changes and that every process is gone after stop().
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from testbed.loadgen import LoadGenerator
from testbed.ports import free_port
from testbed.services import (
    Alertmanager,
    BinaryNotFoundError,
    HAProxy,
    HostService,
    Nginx,
    NginxConfigError,
    Prometheus,
    ScrapeTarget,
    ServiceError,
    ServiceStartError,
    Upstream,
)

pytestmark = pytest.mark.integration

MODEL = "m"


class _Backend(ThreadingHTTPServer):
    """A fake replica: answers predict with a fixed output, counts hits, serves /metrics."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _BackendHandler)
        self.name = name
        self.hits = 0
        self.lock = threading.Lock()
        self.webhooks: list[dict[str, Any]] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def reset(self) -> None:
        with self.lock:
            self.hits = 0

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _BackendHandler(BaseHTTPRequestHandler):
    server: _Backend

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/metrics":
            text = (
                "# HELP testbed_hits_total Requests served.\n"
                "# TYPE testbed_hits_total counter\n"
                f'testbed_hits_total{{backend="{self.server.name}"}} {self.server.hits}\n'
            )
            self._reply(200, text.encode(), "text/plain; version=0.0.4")
            return
        with self.server.lock:
            self.server.hits += 1
        self._reply(200, self.server.name.encode(), "text/plain")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/webhook":
            with self.server.lock:
                self.server.webhooks.append(json.loads(body))
            self._reply(200, b"{}")
            return
        with self.server.lock:
            self.server.hits += 1
        self._reply(200, json.dumps({"predictions": [[1.0]]}).encode())


@pytest.fixture(scope="module")
def backends() -> Iterator[list[_Backend]]:
    servers = [_Backend(f"b{i}") for i in (1, 2, 3)]
    yield servers
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def _reset(backends: list[_Backend]) -> None:
    for b in backends:
        b.reset()


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Our Popen reaps on stop(), so a lingering zombie would also be a failure.
    return False


def _assert_stopped(svc: HostService, pid: int, extra: list[int] | None = None) -> None:
    assert not svc.running
    assert svc.pid_path.exists() is False
    for p in [pid, *(extra or [])]:
        assert _pid_gone(p), f"pid {p} still alive after stop()"


def _load(url: str, n: int, rate: float = 200.0) -> Counter[str]:
    res = LoadGenerator(url, MODEL, rate, n / rate, 2.0, [[0.5]], {"1": [[1.0]]}).run()
    assert res.requests == n
    assert res.failed == 0, res.status_counts
    return Counter(res.upstream_counts)


def _hits(backends: list[_Backend]) -> dict[str, int]:
    return {b.name: b.hits for b in backends}


# --------------------------------------------------------------------------------------
# Nginx
# --------------------------------------------------------------------------------------


def test_nginx_weighted_spread_drain_and_stop(tmp_path: Path, backends: list[_Backend]) -> None:
    ups = [Upstream(b.name, b.address, w) for b, w in zip(backends, (3, 2, 1), strict=True)]
    nginx = Nginx(tmp_path / "nginx", free_port(), ups).start()
    try:
        pid = nginx.pid
        assert pid is not None and int(nginx.pid_path.read_text()) == pid
        workers = nginx.worker_pids()
        assert workers

        by_upstream = _load(nginx.url, 60)
        hits = _hits(backends)
        assert sum(hits.values()) == 60
        assert abs(hits["b1"] - 30) <= 6 and abs(hits["b2"] - 20) <= 6 and abs(hits["b3"] - 10) <= 5, hits
        # X-Upstream header attribution agrees with what the backends saw.
        assert by_upstream == {b.address: b.hits for b in backends}

        log = nginx.read_access_log()
        assert len(log) == 60
        entry = log[-1]
        assert entry["status"] == "200" and entry["upstream_status"] == "200"
        assert entry["upstream_addr"] in {b.address for b in backends}
        assert float(entry["request_time"]) >= 0 and entry["upstream_response_time"]
        assert nginx.stub_status()["requests"] >= 60

        # Drain b3 (weight 0 -> "down"): after the confirmed reload it gets nothing.
        nginx.set_weights({"b3": 0})
        assert "down" in nginx.upstreams_conf_path.read_text()
        assert nginx.pid == pid  # reloaded in place, same master
        assert not set(workers) & set(nginx.worker_pids(accepting_only=True))
        for b in backends:
            b.reset()
        _load(nginx.url, 40)
        hits = _hits(backends)
        assert hits["b3"] == 0 and hits["b1"] + hits["b2"] == 40, hits
        assert abs(hits["b1"] - 24) <= 5, hits

        # And back in.
        nginx.set_weights({"b3": 1, "b1": 1, "b2": 1})
        for b in backends:
            b.reset()
        _load(nginx.url, 30)
        assert all(h >= 7 for h in _hits(backends).values()), _hits(backends)
        all_workers = nginx.worker_pids()
    finally:
        nginx.stop()
    _assert_stopped(nginx, pid, all_workers)
    nginx.stop()  # idempotent


def test_nginx_rejects_bad_config_and_keeps_old(tmp_path: Path, backends: list[_Backend]) -> None:
    ups = [Upstream(b.name, b.address, 1) for b in backends[:2]]
    with Nginx(tmp_path / "nginx", free_port(), ups) as nginx:
        pid = nginx.pid
        assert pid is not None
        before = nginx.upstreams_conf_path.read_text()
        generation = nginx.generation
        with pytest.raises(NginxConfigError, match=r"invalid parameter \"weight=banana\""):
            nginx.apply_upstream_config("upstream backends { server 127.0.0.1:1 weight=banana; }\n", 99)
        assert nginx.upstreams_conf_path.read_text() == before
        assert nginx.generation == generation == nginx.served_generation()
        with pytest.raises(KeyError):
            nginx.set_weights({"nope": 1})
        with pytest.raises(ValueError):
            nginx.set_weights({"b1": -1})
        assert nginx.pid == pid and nginx.running
        assert sum(_load(nginx.url, 20).values()) == 20
    _assert_stopped(nginx, pid)


def test_nginx_start_failure_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        nginx = Nginx(tmp_path / "nginx", port, [Upstream("x", "127.0.0.1:1", 1)], start_timeout_s=5)
        with pytest.raises(ServiceStartError, match="Address already in use"):
            nginx.start()
    assert not nginx.running


def test_missing_binary_names_debian_package(tmp_path: Path) -> None:
    class NoNginx(Nginx):
        binary = "/nonexistent/sbin/nginx"

    with pytest.raises(BinaryNotFoundError, match="nginx-light"):
        NoNginx(tmp_path, free_port(), [Upstream("x", "127.0.0.1:1", 1)]).start()


# --------------------------------------------------------------------------------------
# Prometheus + Alertmanager
# --------------------------------------------------------------------------------------


def test_prometheus_scrapes_and_alerts_via_alertmanager(tmp_path: Path, backends: list[_Backend]) -> None:
    hook = backends[2]
    with hook.lock:
        hook.webhooks.clear()
    rules = """groups:
- name: testbed
  rules:
  - alert: TestbedAlwaysFiring
    expr: vector(1)
    labels: {severity: test}
"""
    am = Alertmanager(tmp_path / "am", free_port(), webhook_url=f"http://{hook.address}/webhook").start()
    prom = Prometheus(
        tmp_path / "prom",
        free_port(),
        targets=[ScrapeTarget("fake", backends[0].address, "/metrics", {"replica": "r1"})],
        scrape_interval_s=0.5,
        rules_yaml=rules,
        alertmanager_url=am.url,
    )
    try:
        prom.start()
        series = prom.wait_for_series('testbed_hits_total{job="fake"}', 1, timeout_s=15)
        labels = series[0]["metric"]
        assert labels["backend"] == "b1" and labels["replica"] == "r1"
        assert labels["instance"] == backends[0].address
        assert prom.query('up{job="fake"}')[0]["value"][1] == "1"

        # Rule fires -> Prometheus sends it to Alertmanager -> Alertmanager calls the webhook.
        prom.wait_for_alertmanager(timeout_s=15)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names = {a["labels"].get("alertname") for a in am.alerts()}
            with hook.lock:
                delivered = list(hook.webhooks)
            if "TestbedAlwaysFiring" in names and delivered:
                break
            time.sleep(0.2)
        assert "TestbedAlwaysFiring" in names
        assert any(a["labels"]["alertname"] == "TestbedAlwaysFiring" for w in delivered for a in w["alerts"])
        ppid, apid = prom.pid, am.pid
        assert ppid is not None and apid is not None
    finally:
        prom.stop()
        am.stop()
    _assert_stopped(prom, ppid)
    _assert_stopped(am, apid)


def test_alertmanager_accepts_posted_alerts(tmp_path: Path) -> None:
    with Alertmanager(tmp_path / "am", free_port()) as am:
        pid = am.pid
        assert pid is not None
        am.post_alerts([{"labels": {"alertname": "ReplicaWillFail", "replica": "r2"}, "annotations": {"p": "0.93"}}])
        alerts = am.alerts()
        assert len(alerts) == 1
        assert alerts[0]["labels"] == {"alertname": "ReplicaWillFail", "replica": "r2"}
        assert alerts[0]["status"]["state"] == "active"
    _assert_stopped(am, pid)


# --------------------------------------------------------------------------------------
# HAProxy
# --------------------------------------------------------------------------------------


def test_haproxy_runtime_drain_and_weight(tmp_path: Path, backends: list[_Backend]) -> None:
    ups = [Upstream(b.name, b.address, 1) for b in backends]
    with HAProxy(tmp_path / "hap", free_port(), "tfs", ups) as hap:
        pid = hap.pid
        assert pid is not None
        state = hap.show_servers()
        assert set(state) == {"b1", "b2", "b3"}
        assert all(s["state"] == "ready" and s["weight"] == 1 for s in state.values())
        assert "Uptime" in hap.runtime("show info")

        by_upstream = _load(hap.url, 30)
        assert _hits(backends) == {"b1": 10, "b2": 10, "b3": 10}
        assert by_upstream == {b.address: 10 for b in backends}

        hap.set_state("b1", "drain")
        hap.set_weight("b2", 3)
        state = hap.show_servers()
        assert state["b1"]["state"] == "drain" and state["b2"]["weight"] == 3
        for b in backends:
            b.reset()
        _load(hap.url, 40)
        hits = _hits(backends)
        # 3:1 between b2 and b3 (the round-robin cursor position may shift one request).
        assert hits["b1"] == 0 and abs(hits["b2"] - 30) <= 2 and hits["b2"] + hits["b3"] == 40, hits

        hap.set_state("b3", "maint")
        assert hap.show_servers()["b3"]["state"] == "maint"
        for b in backends:
            b.reset()
        _load(hap.url, 10)
        assert _hits(backends) == {"b1": 0, "b2": 10, "b3": 0}

        hap.set_state("b1", "ready")
        hap.set_state("b3", "ready")
        assert all(s["state"] == "ready" for s in hap.show_servers().values())
        with pytest.raises(ServiceError, match=r"No such server|not found"):
            hap.set_weight("nope", 1)
    _assert_stopped(hap, pid)
