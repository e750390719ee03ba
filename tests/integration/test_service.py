"""`watcher run` as a user runs it, against the testbed: API, metrics, reload, shutdown, tokens."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families as parse

from testbed.loadgen import LoadGenerator
from testbed.ports import free_port
from testbed.stack import Testbed, TestbedConfig
from tests.integration.running import Running, wait_for
from watcher.rules import SHIPPED_RULES

pytestmark = pytest.mark.integration

RULES = SHIPPED_RULES


@pytest.fixture
def bed(docker_client: docker.DockerClient) -> Iterator[Testbed]:
    with Testbed(TestbedConfig(replicas=3, weights=(3, 2, 1), memory_limit="160m")) as bed:
        yield bed


def test_findings_and_actions_on_status_and_metrics(bed: Testbed, tmp_path: Path) -> None:
    w = Running(bed, tmp_path)
    try:
        # ready within moments of start: every source has connected (the probes after their first
        # round on the inventory's first listing)
        wait_for(lambda: w.get("/readyz").json()["ready"] is True, 10, "/readyz ready")
        sick = bed.replicas[0]
        sick.set_faults({"error_ramp": {"start": 1.0, "end": 1.0, "over_s": 1}})
        gen = LoadGenerator(bed.url, "half_plus_two", 20, 8, 5.0, [1.0])
        gen.run()

        def acted() -> Any:
            incidents = w.get("/status").json()["recent_incidents"]
            return [i for i in incidents if i["target"].endswith(sick.name) and i["state"] != "running"]

        [incident, *_] = wait_for(acted, 60, "an incident for the sick replica")
        assert incident["predicts"] == "http_5xx" and incident["state"] == "resolved", incident
        metrics = w.get("/metrics").text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse(metrics) for s in f.samples}
        assert any(
            n == "watcher_findings_total" and ("predicts", "http_5xx") in ls and v >= 1
            for (n, ls), v in samples.items()
        )
        # a replica serving 500s is drained, restarted (which clears the injected fault) and restored
        assert samples[("watcher_actions_total", (("outcome", "done"), ("step", "drain")))] >= 1
        assert samples[("watcher_actions_total", (("outcome", "done"), ("step", "restart")))] >= 1
        assert "watcher_lines_total" in metrics and "watcher_queue_depth" in metrics
        # the heartbeat reaches Alertmanager
        assert bed.alertmanager is not None
        wait_for(
            lambda: [a for a in bed.alertmanager.alerts() if a["labels"]["alertname"] == "ServingWatcherWatchdog"],
            15,
            "the watchdog alert",
        )
    finally:
        assert w.stop() == 0
    assert any(line["msg"] == "stopped" for line in w.logs())


def test_mutations_need_the_token(bed: Testbed, tmp_path: Path) -> None:
    w = Running(bed, tmp_path)
    try:
        assert w.post("/pause", {}, token=None).status_code == 401
        assert w.post("/pause", {}, token="wrong").status_code == 401
        assert w.get("/status").json()["policy"]["paused"] is False
        assert w.post("/pause", {}).json() == {"paused": True}
        assert w.get("/status").json()["policy"]["paused"] is True
        assert w.post("/dry-run", {"enabled": "yes"}).status_code == 400
        assert w.post("/silence", {"matchers": {"target": "local/x"}, "duration_s": 60}).status_code == 200
        assert w.get("/status").json()["policy"]["silences"][0]["matchers"] == {"target": "local/x"}
        assert w.post("/resume", {}).json() == {"paused": False}
    finally:
        w.stop()
    tokenless = Running(bed, tmp_path, WATCHER_API_TOKEN="")
    try:
        r = tokenless.post("/pause", {})
        assert r.status_code == 403 and "WATCHER_API_TOKEN" in r.json()["error"]
    finally:
        tokenless.stop()


def test_a_bad_pack_on_reload_keeps_the_last_good_one(bed: Testbed, tmp_path: Path) -> None:
    w = Running(bed, tmp_path)
    try:
        (w.packs / "broken.yaml").write_text(
            "pack: broken\nrules:\n  - id: x\n    match: {log: y}\n    predicts: nope\n"
        )
        rejected = wait_for(
            lambda: [line for line in w.logs() if line["msg"].startswith("rule pack rejected")], 10, "a rejection"
        )
        assert "broken.yaml:5:" in rejected[0]["error"]
        sick = bed.replicas[1]
        sick.set_faults({"error_ramp": {"start": 1.0, "end": 1.0, "over_s": 1}})
        LoadGenerator(bed.url, "half_plus_two", 20, 6, 5.0, [1.0]).run()

        def old_packs_fired() -> bool:
            # the finding is active until the replica's restart resets its count: seen there, or as the incident
            status = w.get("/status").json()
            findings = [f for t in status["targets"].values() for f in t["findings"]]
            return any(f["predicts"] == "http_5xx" for f in findings) or any(
                i.get("predicts") == "http_5xx" for i in status["recent_incidents"]
            )

        wait_for(old_packs_fired, 30, "findings from the old packs")
        (w.packs / "broken.yaml").unlink()
    finally:
        w.stop()


def test_sigterm_mid_incident_then_restart_finishes_it(bed: Testbed, tmp_path: Path) -> None:
    w = Running(bed, tmp_path, WATCHER_SHUTDOWN_GRACE_S="0")
    sick = bed.replicas[0]
    sick.set_faults({"error_ramp": {"start": 1.0, "end": 1.0, "over_s": 1}})
    LoadGenerator(bed.url, "half_plus_two", 20, 6, 5.0, [1.0]).run()
    wait_for(lambda: w.get("/status").json()["recent_incidents"], 30, "an incident")
    assert w.stop() == 0
    sick.clear_faults()
    again = Running(bed, tmp_path)
    try:

        def finished() -> Any:
            incidents = again.get("/status").json()["recent_incidents"]
            return incidents and all(i["state"] != "running" for i in incidents) and incidents

        incidents = wait_for(finished, 60, "the incident to finish after the restart")
        assert incidents[0]["state"] in ("resolved", "held"), incidents[0]
        upstreams = (bed.nginx.workdir / "upstreams.conf").read_text()  # type: ignore[union-attr]
        if incidents[0]["state"] == "resolved":
            assert "down" not in upstreams.split("{", 1)[1]  # nothing left drained and forgotten
    finally:
        again.stop()


def test_a_dead_essential_thread_fails_healthz_stops_the_heartbeat_and_ends_the_process(tmp_path: Path) -> None:
    """In-process, so the test can end the decision thread as a bug would; the process-level
    behaviour is the same call: ``run_forever`` returns 1 and the container restarts."""
    from watcher.config import Settings
    from watcher.rulepack.compile import compile_packs
    from watcher.service import Service

    sent: list[str] = []
    settings = Settings(
        store=tmp_path / "watcher.db",
        api_listen=f"127.0.0.1:{free_port()}",
        label_selector=["serving-watcher.test=nothing-matches"],
        stats_interval_s=0,
        heartbeat_s=0.2,
        reload_poll_s=0.2,
    )
    service = Service(settings, compile_packs([RULES / "docker.yaml"]))
    service.alerter = type(
        "Recording", (), {"fire": lambda _s, a: sent.append(a.name), "resolve": lambda _s, a: None}
    )()
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(service.serve()), daemon=True)
    runner.start()
    url = f"http://127.0.0.1:{settings.api_address[1]}/healthz"
    http = requests.Session()
    http.trust_env = False

    def healthy() -> bool:
        try:
            return http.get(url, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(healthy, 20, "healthz 200")
    wait_for(lambda: sent, 10, "a heartbeat")
    service.decisions.stop()  # the decision thread ends, as an uncaught bug would end it
    runner.join(timeout=30)
    assert done == [1], "the service did not end itself with status 1"
    beats = len(sent)
    time.sleep(0.6)
    assert len(sent) == beats, "the heartbeat went on after the decision thread died"
