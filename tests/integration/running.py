"""`watcher run` as a real subprocess against the testbed, the way a user starts it: one definition
shared by the service tests and the kill-chaos suite, so both drive the same process with the same
environment (every ``WATCHER_*`` setting the testbed needs, overridable per test)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from testbed.ports import free_port
from testbed.replicas import TESTBED_LABEL
from testbed.stack import Testbed
from watcher.rulepack.compile import CompileOptions, compile_packs, load_packs
from watcher.rules import SHIPPED_RULES
from watcher.sources.base import SignalQueue
from watcher.sources.prometheus import PrometheusSource

TOKEN = "test-token-123"


class Running:
    def __init__(self, bed: Testbed, tmp: Path, **env: str) -> None:
        assert bed.nginx is not None and bed.alertmanager is not None
        self.port = free_port()
        self.packs = tmp / "packs"
        if not self.packs.exists():
            self.packs.mkdir()
            for name in ("tfserving", "nginx", "docker"):
                shutil.copy(SHIPPED_RULES / f"{name}.yaml", self.packs)
        n = bed.nginx.workdir
        self.env = {
            **os.environ,
            "WATCHER_STORE": str(tmp / "watcher.db"),
            "WATCHER_API_LISTEN": f"127.0.0.1:{self.port}",
            "WATCHER_API_TOKEN": TOKEN,
            "WATCHER_PACKS": json.dumps([str(self.packs)]),
            "WATCHER_LABEL_SELECTOR": json.dumps([f"{TESTBED_LABEL}={bed.run_id}"]),
            "WATCHER_LOG_FILES": json.dumps({"nginx": str(n / "access.log")}),
            "WATCHER_LB": "nginx",
            "WATCHER_NGINX_UPSTREAMS_FILE": str(n / "upstreams.conf"),
            "WATCHER_NGINX_PID_FILE": str(n / "nginx.master.pid"),
            "WATCHER_NGINX_CONF": str(n / "nginx.conf"),
            "WATCHER_NGINX_BINARY": bed.nginx.binary_path(),
            "WATCHER_MODEL_REPO": str(bed.model_repo),
            "WATCHER_ALERTMANAGER_URL": f"http://127.0.0.1:{bed.alertmanager.port}",
            "WATCHER_ACTIONS_ENABLED": "true",
            "WATCHER_STATS_INTERVAL_S": "0",
            "WATCHER_HEARTBEAT_S": "2",
            "WATCHER_RELOAD_POLL_S": "0.5",
            **env,
        }
        self.log = tmp / f"watcher-{time.time_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher.cli", "run"],
            env=self.env,
            stderr=self.log.open("wb"),
            stdout=subprocess.DEVNULL,
        )
        self.http = requests.Session()
        self.http.trust_env = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.get("/healthz").status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError(self.log.read_text())

    def get(self, path: str) -> requests.Response:
        return self.http.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def post(self, path: str, body: dict[str, Any], token: str | None = TOKEN) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.post(f"http://127.0.0.1:{self.port}{path}", json=body, headers=headers, timeout=5)

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def foresight_series(prometheus_url: str, replica: str) -> dict[str, float]:
    """The shipped foresight pack's error_ratio and latency_p99_seconds of one replica (its ``replica``
    label), as the watcher's Prometheus source reads them, over a 10 s window."""
    ruleset = compile_packs(load_packs([SHIPPED_RULES / "foresight.yaml"]), CompileOptions(prometheus_window="10s"))
    queries = [q for q in ruleset.queries if q.id in ("error_ratio", "latency_p99_seconds")]
    source = PrometheusSource(SignalQueue(100, 100), prometheus_url, queries, interval_s=1.0, timeout_s=3.0)
    return {s.series: s.value for s in source.poll_once() or [] if s.target and s.target.container == replica}
