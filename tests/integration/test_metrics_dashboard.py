"""`watcher run`'s /metrics through a real Prometheus across one incident, and the shipped dashboard's
every query against the same Prometheus.

The testbed's Prometheus scrapes the replicas (TF Serving's metrics), the watcher (1 s) and a small
exporter that reads each replica's memory, limit and start time from the Docker API under cAdvisor's
names (the testbed has no cAdvisor; the series are the same numbers from the same cgroup). One replica
serves 500s until the watcher drains, restarts and restores it; then: every watcher series has the
type its name promises, the process/python collectors and the build info are there, no counter went
down during the incident, and each dashboard panel and annotation query returns data.
"""

from __future__ import annotations

import calendar
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scripts.render_dashboard import dashboard_queries, render
from testbed.loadgen import LoadGenerator
from testbed.ports import free_port
from testbed.services import ScrapeTarget
from testbed.stack import Testbed, TestbedConfig
from tests.integration.running import Running, wait_for
from watcher.rules import SHIPPED_RULES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "serving-watcher.json"
COUNTERS = {
    "watcher_findings_total",
    "watcher_incidents_opened_total",
    "watcher_incidents_ended_total",
    "watcher_actions_total",
    "watcher_lines_total",
    "watcher_samples_total",
    "watcher_lifecycle_events_total",
    "watcher_dropped_signals_total",
    "watcher_store_write_errors_total",
    "watcher_alerts_dropped_total",
    "watcher_alerts_delivered_total",
}
GAUGES = {
    "watcher_incidents_open",
    "watcher_findings_active",
    "watcher_runway_eta_seconds",
    "watcher_replica_weight",
    "watcher_paused",
    "watcher_dry_run",
    "watcher_queue_depth",
    "watcher_source_connected",
    "watcher_store_writable",
    "watcher_alerts_queued",
    "watcher_build_info",
}
HISTOGRAMS = {"watcher_finding_eta_seconds", "watcher_lead_time_seconds", "watcher_detector_update_seconds"}


class ContainerMemory(Collector):
    """cAdvisor's memory, limit and start-time series for the testbed's replicas, from Docker's stats
    API, read by a background thread (one stats call takes a second or two) and served from its cache."""

    def __init__(self, client: docker.DockerClient, names: list[str]) -> None:
        self.client, self.names = client, names
        self.latest: dict[str, tuple[float, float, float, str]] = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._poll, args=(n,), daemon=True) for n in names]
        for t in self.threads:
            t.start()

    def _poll(self, name: str) -> None:
        while not self.stop.is_set():
            try:
                c = self.client.containers.get(name)
                mem = c.stats(stream=False).get("memory_stats", {})
                if "usage" in mem:
                    working = mem["usage"] - mem.get("stats", {}).get("inactive_file", 0)
                    when = c.attrs["State"]["StartedAt"][:19]
                    started = calendar.timegm(time.strptime(when, "%Y-%m-%dT%H:%M:%S"))
                    self.latest[name] = (working, mem["limit"], started, c.attrs["Config"]["Image"])
            except (docker.errors.APIError, requests.RequestException, ValueError):
                pass  # restarting
            self.stop.wait(0.5)

    def collect(self) -> Iterable[Any]:
        labels = ["replica", "name", "image"]
        working = GaugeMetricFamily("container_memory_working_set_bytes", "working set", labels=labels)
        limit = GaugeMetricFamily("container_spec_memory_limit_bytes", "limit", labels=labels)
        started = GaugeMetricFamily("container_start_time_seconds", "start time", labels=labels)
        for name, (ws, lim, start, image) in dict(self.latest).items():
            working.add_metric([name, name, image], ws)
            limit.add_metric([name, name, image], lim)
            started.add_metric([name, name, image], start)
        yield from (working, limit, started)


@pytest.fixture
def bed(docker_client: docker.DockerClient) -> Iterator[Testbed]:
    with Testbed(TestbedConfig(replicas=3, weights=(3, 2, 1), memory_limit="160m")) as bed:
        yield bed


def range_query(prom: str, promql: str, start: float, end: float) -> list[dict[str, Any]]:
    r = requests.get(
        f"{prom}/api/v1/query_range",
        params={"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1s"},
        timeout=10,
    )
    body = r.json()
    assert body["status"] == "success", (promql, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_metrics_through_prometheus_across_an_incident_and_every_dashboard_query_answers(
    bed: Testbed, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    assert bed.prometheus is not None
    prom = bed.prometheus.url
    exporter_port = free_port()
    registry = CollectorRegistry()
    memory = ContainerMemory(docker_client, [r.name for r in bed.replicas])
    registry.register(memory)
    server, _thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    packs = tmp_path / "packs"
    packs.mkdir()
    for name in ("tfserving", "nginx", "docker", "foresight"):
        shutil.copy(SHIPPED_RULES / f"{name}.yaml", packs)
    w = Running(
        bed,
        tmp_path,
        WATCHER_PROMETHEUS_URL=prom,
        WATCHER_PROMETHEUS_INTERVAL_S="1",
        WATCHER_PROMETHEUS_WINDOW="10s",
    )
    try:
        bed.prometheus.targets += [
            ScrapeTarget("watcher", f"127.0.0.1:{w.port}"),
            ScrapeTarget("cadvisor", f"127.0.0.1:{exporter_port}"),
        ]
        bed.prometheus.reload()
        bed.prometheus.wait_for_series('watcher_build_info{job="watcher"}', timeout_s=20)
        start = time.time()
        sick = bed.replicas[0]
        gen = LoadGenerator(bed.url, "half_plus_two", 20, 40, 5.0, [1.0])
        gen.start()
        try:
            time.sleep(8)  # a baseline of every series before the fault
            sick.set_faults({"error_ramp": {"start": 1.0, "end": 1.0, "over_s": 1}})

            def resolved() -> Any:
                incidents = w.get("/status").json()["recent_incidents"]
                return [i for i in incidents if i["target"].endswith(sick.name) and i["state"] == "resolved"]

            wait_for(resolved, 60, "a resolved incident for the sick replica")
            # a runway forecast needs a few 5 s buckets of Docker stats per replica: on a slow machine
            # the incident can be over before the healthy replicas have their first fit
            wait_for(
                lambda: bed.prometheus.query('watcher_runway_eta_seconds{job="watcher"}'),
                60,
                "a runway forecast for some replica",
            )
            time.sleep(6)  # the scrapes after the incident ended
        finally:
            gen.stop()
        end = time.time()

        # -- types, collectors, build info --------------------------------------------------------
        meta = requests.get(f"{prom}/api/v1/metadata", timeout=10).json()["data"]

        def kind(name: str) -> str | None:
            for candidate in (name, name.removesuffix("_total")):
                if candidate in meta:
                    return str(meta[candidate][0]["type"])
            return None

        wrong = {n: kind(n) for n in COUNTERS if kind(n) != "counter"}
        wrong |= {n: kind(n) for n in GAUGES if kind(n) != "gauge"}
        wrong |= {n: kind(n) for n in HISTOGRAMS if kind(n) != "histogram"}
        assert not wrong, wrong
        for family in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
            assert bed.prometheus.query(f'{family}{{job="watcher"}}'), family
        [build] = bed.prometheus.query('watcher_build_info{job="watcher"}')
        assert build["metric"]["version"] and build["metric"]["python_version"] and build["value"][1] == "1"

        # -- counters only went up across the incident -------------------------------------------
        went_down = []
        seen = set()
        for series in range_query(prom, '{__name__=~"watcher_.*_total",job="watcher"}', start, end):
            values = [float(v) for _, v in series["values"]]
            seen.add(series["metric"]["__name__"])
            if any(b < a for a, b in itertools.pairwise(values)):
                went_down.append((series["metric"], values))
        assert not went_down, went_down
        assert {"watcher_findings_total", "watcher_incidents_opened_total", "watcher_actions_total"} <= seen
        # the incident was counted: opened once for the sick replica, and its steps as done
        opened = range_query(
            prom, f'watcher_incidents_opened_total{{job="watcher",target=~".*/{sick.name}"}}', start, end
        )
        assert opened and float(opened[0]["values"][-1][1]) >= 1
        restarts = bed.prometheus.query('watcher_actions_total{job="watcher",step="restart",outcome="done"}')
        assert restarts and float(restarts[0]["value"][1]) >= 1

        # -- every dashboard query returns data ---------------------------------------------------
        dashboard = json.loads(DASHBOARD.read_text())
        # the runway forecast starts over when a replica restarts (Docker's start event), so the
        # restarted one may have none yet: that panel is checked across all replicas
        relearning = {"Memory runway ETA (watcher forecast)"}
        everyone = dict(dashboard_queries(dashboard, ".*"))
        empty = []
        for title, promql in dashboard_queries(dashboard, sick.name):
            query = everyone[title] if title in relearning else promql
            if not range_query(prom, query, start, end):
                empty.append((title, query))
        assert not empty, empty

        # -- the panels render (into docs/ when asked: RENDER_DASHBOARD_TO=docs) ------------------
        out = Path(os.environ.get("RENDER_DASHBOARD_TO") or tmp_path / "render")
        written = render(dashboard, prom, start, end, ".*", out)
        assert written and all(p.stat().st_size > 10_000 for p in written)
    finally:
        assert w.stop() == 0
        server.shutdown()
        memory.stop.set()
