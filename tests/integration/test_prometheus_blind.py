"""Prometheus unreachable for 60 s: no finding from stale or absent series, and one "watcher blind"
alert that fires after the threshold and resolves when Prometheus answers again (issue #14, chaos).

Real Prometheus (testbed.services) scraping a real TF Serving simulator process under load, both on
loopback; the watcher is the product's Service with the shipped foresight pack, in process, with a
Docker engine address that never answers (no Docker needed) and a recording alerter.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
import requests

from testbed.ports import free_port
from testbed.services import Prometheus, ScrapeTarget
from watcher.actions.base import Alert, Alerter
from watcher.config import Settings
from watcher.retry import Backoff
from watcher.rulepack.compile import compile_packs
from watcher.rules import SHIPPED_RULES
from watcher.service import Service

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "testbed" / "simulator" / "tfserving_sim.py"
METRICS_PATH = "/monitoring/prometheus/metrics"
MONITORING_CONF = 'prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'
OUTAGE_S = 60.0


class Recording(Alerter):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []  # (fire|resolve, name, monotonic time)

    def fire(self, alert: Alert) -> None:
        self.events.append(("fire", alert.name, time.monotonic()))

    def resolve(self, alert: Alert) -> None:
        self.events.append(("resolve", alert.name, time.monotonic()))

    def of(self, name: str) -> list[tuple[str, float]]:
        return [(kind, at) for kind, n, at in self.events if n == name]


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def _findings(service: Service) -> float:
    return sum(s.value for m in service.metrics.findings.collect() for s in m.samples if s.name.endswith("_total"))


def test_prometheus_down_60s_gives_no_finding_and_one_blind_alert_that_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker, "DockerClient", functools.partial(docker.DockerClient, version="1.43"))
    shutil.copytree(REPO / "models", tmp_path / "models")
    (tmp_path / "monitoring.config").write_text(MONITORING_CONF)
    sim_port = free_port()
    with open(tmp_path / "sim.log", "wb") as log:
        sim = subprocess.Popen(
            [
                sys.executable,
                str(SIM),
                f"--rest_api_port={sim_port}",
                "--model_name=half_plus_two",
                f"--model_base_path={tmp_path / 'models' / 'half_plus_two'}",
                f"--monitoring_config_file={tmp_path / 'monitoring.config'}",
                "--seed=7",
            ],
            stdout=log,
            stderr=log,
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if k != "SIM_FAULTS"},
        )
    stop_load = threading.Event()
    prom = Prometheus(
        tmp_path / "prom",
        free_port(),
        [ScrapeTarget("tfs", f"127.0.0.1:{sim_port}", METRICS_PATH, {"replica": "tfs-1"})],
        scrape_interval_s=1.0,
    )
    service: Service | None = None
    try:
        http = requests.Session()
        http.trust_env = False
        predict = f"http://127.0.0.1:{sim_port}/v1/models/half_plus_two:predict"

        def ready() -> bool:
            try:
                return http.post(predict, json={"instances": [1.0]}, timeout=1).status_code == 200
            except requests.RequestException:
                return False

        _wait(ready, 20, "the simulator serves")

        def load() -> None:  # steady traffic, so error ratio and latency have values throughout
            while not stop_load.wait(0.05):
                with contextlib.suppress(requests.RequestException):
                    http.post(predict, json={"instances": [1.0, 2.0]}, timeout=2)

        threading.Thread(target=load, daemon=True).start()
        prom.start()
        prom.wait_for_series('{__name__=":tensorflow:serving:request_count"}', timeout_s=20)

        settings = Settings(
            store=tmp_path / "watcher.db",
            engines={"local": "tcp://127.0.0.1:9"},
            api_listen=f"127.0.0.1:{free_port()}",
            packs=[SHIPPED_RULES / "foresight.yaml"],
            prometheus_url=prom.url,
            prometheus_interval_s=1.0,
            prometheus_window="5s",
            heartbeat_s=3600.0,
        )
        service = Service(settings, compile_packs(settings.packs))
        recording = Recording()
        service.alerter = recording
        source = service.live.prometheus
        assert source is not None
        # the default backoff grows to 2 minutes; the test wants to see the return within seconds
        source.backoff = Backoff(1.0, 2.0)
        service.start()
        _wait(lambda: service is not None and service.live.engine.stats.samples >= 12, 30, "samples flow")
        assert _findings(service) == 0

        prom.stop()  # by its own PID
        down = time.monotonic()
        _wait(lambda: bool(recording.of("ServingWatcherBlind")), 40, "the blind-spot alert")
        fired_after = recording.of("ServingWatcherBlind")[0][1] - down
        assert settings.prometheus_blind_after_s <= fired_after <= settings.prometheus_blind_after_s + 5
        status = service.status()
        assert status["blind"]["alerting"] and status["blind"]["prometheus_unreachable_since"] is not None
        samples_before = service.live.engine.stats.samples
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        prom.start()  # same port, same data directory
        back = time.monotonic()
        _wait(lambda: len(recording.of("ServingWatcherBlind")) == 2, 15, "the blind-spot alert resolved")
        assert recording.of("ServingWatcherBlind")[1][0] == "resolve"
        resolved_after = recording.of("ServingWatcherBlind")[1][1] - back
        _wait(lambda: service is not None and service.live.engine.stats.samples > samples_before + 8, 15, "fresh")
        time.sleep(3.0)  # the first points after the gap have been judged
        assert _findings(service) == 0, service.store.findings()
        assert [k for k, _ in recording.of("ServingWatcherBlind")] == ["fire", "resolve"]  # once, then resolved
        assert not service.status()["blind"]["alerting"]
        print(f"blind alert after {fired_after:.1f}s down, resolved {resolved_after:.1f}s after Prometheus returned")
    finally:
        stop_load.set()
        if service is not None:
            service.stop()
        prom.stop()
        sim.terminate()
        sim.wait(timeout=10)
