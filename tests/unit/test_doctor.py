"""`watcher doctor` with fakes where a dependency is absent: a fake Docker engine, an in-process HTTP
server standing in for Prometheus and Alertmanager, real files and a real process for Nginx."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from watcher.cli import app
from watcher.config import ConfigError, Settings, load_settings
from watcher.doctor import Doctor, Line
from watcher.inventory import matches_selector
from watcher.rules import SHIPPED_RULES

GOOD_LABELS = {"watcher.enable": "true", "watcher.service": "m", "watcher.model": "m"}


@dataclass
class FakeContainer:
    name: str
    labels: dict[str, str]
    status: str = "running"
    id: str = field(default="")
    attrs: dict[str, Any] = field(default_factory=lambda: {"State": {"Running": True}})


class FakeContainers:
    def __init__(self, containers: list[FakeContainer]) -> None:
        self.all = containers

    def list(self, all: bool, filters: dict[str, list[str]]) -> list[FakeContainer]:
        return [c for c in self.all if matches_selector(c.labels, filters["label"])]

    def get(self, name: str) -> FakeContainer:
        return next(c for c in self.all if c.name == name)


class FakeDocker:
    def __init__(self, containers: list[FakeContainer]) -> None:
        self.containers = FakeContainers(containers)

    def version(self) -> dict[str, str]:
        return {"Version": "27.0-fake"}


class FakeMonitoring(BaseHTTPRequestHandler):
    """Prometheus' /api/v1/query and /-/ready, Alertmanager's /-/ready: ``series`` is what every query returns."""

    series: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/-/ready":
            body = b"ready"
        elif url.path == "/api/v1/query":
            assert parse_qs(url.query)["query"]
            result = [{"metric": m, "value": [0, "1"]} for m in self.series]
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def monitoring() -> Iterator[tuple[str, type[FakeMonitoring]]]:
    handler = type("Handler", (FakeMonitoring,), {"series": [{"replica": "tfs-1"}, {"replica": "tfs-2"}]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def nginx_master() -> Iterator[int]:
    """A process titled as an Nginx master (what the PID file check looks for)."""
    proc = subprocess.Popen(["bash", "-c", 'exec -a "nginx: master process" sleep 60'])
    # Popen returns before bash has exec'd: until then the PID is titled "bash" (the check would fail)
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while not cmdline.read_bytes().startswith(b"nginx: master") and time.monotonic() < deadline:
        time.sleep(0.01)
    yield proc.pid
    proc.kill()
    proc.wait()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fleet(tmp_path: Path, monitoring: tuple[str, Any], nginx_master: int) -> dict[str, Any]:
    """Settings for a healthy fleet of two replicas and the fake engine that holds them."""
    url, _ = monitoring
    (tmp_path / "models" / "m" / "1").mkdir(parents=True)
    upstreams = tmp_path / "upstreams.conf"
    upstreams.write_text("upstream m {\n    server 127.0.0.1:8501 weight=3;\n    server 127.0.0.1:8502 weight=1;\n}\n")
    pid_file = tmp_path / "nginx.pid"
    pid_file.write_text(f"{nginx_master}\n")
    return {
        "prometheus_url": url,
        "alertmanager_url": url,
        "lb": "nginx",
        "nginx_upstreams_file": upstreams,
        "nginx_pid_file": pid_file,
        "nginx_binary": sys.executable,
        "model_repo": tmp_path / "models",
        "store": tmp_path / "watcher.db",
        "packs": [SHIPPED_RULES / "tfserving.yaml", SHIPPED_RULES / "foresight.yaml"],
    }


def containers(*missing: str) -> list[FakeContainer]:
    out = []
    for i, port in ((1, 8501), (2, 8502)):
        labels = {**GOOD_LABELS, "watcher.upstream": f"127.0.0.1:{port}"}
        if i == 2:
            for label in missing:
                del labels[label]
        out.append(FakeContainer(f"tfs-{i}", labels, id=f"id{i}"))
    out.append(FakeContainer("unrelated", {"watcher.model": "m"}, id="id3"))  # not selected
    return out


def check(settings: dict[str, Any], fake: list[FakeContainer] | None = None) -> list[Line]:
    return list(Doctor(Settings(**settings), clients={"local": FakeDocker(fake or containers())}, timeout_s=2).run())


def problems(lines: list[Line]) -> list[str]:
    return [line.text for line in lines if line.kind == "problem"]


def test_a_healthy_fleet_has_no_problem(fleet: dict[str, Any], tmp_path: Path) -> None:
    lines = check(fleet)
    assert problems(lines) == []
    text = "\n".join(map(str, lines))
    assert "ok: container local/tfs-1 (running): can be remediated: upstream 127.0.0.1:8501, model m" in text
    assert "ok: series error_ratio: returned 2 series" in text
    assert "nginx upstreams file" in text and "has 127.0.0.1:8502 at weight 1" in text
    assert "alertmanager" in text and "unrelated" not in text
    assert list(tmp_path.glob("watcher.db*")) == []  # read-only: the store is not created


@pytest.mark.parametrize("missing", [("watcher.model",), ("watcher.upstream",), ("watcher.upstream", "watcher.model")])
def test_a_container_missing_a_label_is_named_with_the_label(fleet: dict[str, Any], missing: tuple[str, ...]) -> None:
    [problem] = problems(check(fleet, containers(*missing)))
    assert problem.startswith("container local/tfs-2 (running): watched but cannot be remediated: missing label ")
    assert problem.split("missing label ")[1].startswith(" and ".join(missing))


def test_an_unknown_protocol_label_is_a_problem_naming_the_allowed_values(fleet: dict[str, Any]) -> None:
    fake = containers()
    fake[1].labels["watcher.protocol"] = "grpc"
    fake[0].labels["watcher.protocol"] = "v2"
    lines = check(fleet, fake)
    [problem] = problems(lines)
    assert problem.startswith(
        "container local/tfs-2: unknown watcher.protocol='grpc'; allowed: kserve-v1, tfserving, torchserve, v2"
    )
    assert any(line.text.endswith("service m, protocol v2") for line in lines)


def test_label_names_come_from_the_settings(fleet: dict[str, Any]) -> None:
    [problem] = problems(check({**fleet, "model_label": "example.com/model"}, containers()[:1]))
    assert "missing label example.com/model" in problem


def test_alertmanager_unreachable(fleet: dict[str, Any]) -> None:
    port = closed_port()
    [problem] = problems(check({**fleet, "alertmanager_url": f"http://127.0.0.1:{port}"}))
    assert problem == f"alertmanager (http://127.0.0.1:{port}): not ready: connection refused or reset"


def test_series_without_the_replica_label(fleet: dict[str, Any], monitoring: tuple[str, Any]) -> None:
    monitoring[1].series = [{"instance": "a:1"}]
    found = problems(check(fleet))
    assert found and all("none with label 'replica'" in p for p in found)
    monitoring[1].series = []
    lines = check(fleet)
    assert problems(lines) == [] and any(ln.kind == "warning" and "returned 0 series" in ln.text for ln in lines)


def test_prometheus_unreachable(fleet: dict[str, Any]) -> None:
    port = closed_port()
    [problem] = problems(check({**fleet, "prometheus_url": f"http://127.0.0.1:{port}"}))
    assert problem == f"prometheus (http://127.0.0.1:{port}): not ready: connection refused or reset"


def test_nginx_stale_pid_and_unknown_upstream(fleet: dict[str, Any], tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    fleet["nginx_pid_file"].write_text(f"{gone.pid}\n")
    fleet["nginx_upstreams_file"].write_text("upstream m {\n    server 127.0.0.1:8501 weight=3;\n}\n")
    found = problems(check(fleet))
    assert f"nginx pid file {fleet['nginx_pid_file']}: PID {gone.pid} is not running (stale file)" in found
    assert any(p.startswith("container local/tfs-2: nginx: no server 127.0.0.1:8502") for p in found)
    assert len(found) == 2


def test_model_repo_without_versions(fleet: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "models" / "m" / "1").rmdir()
    [problem] = problems(check(fleet))
    assert "no numbered version directory" in problem


def test_no_container_matches_and_an_engine_that_does_not_answer(fleet: dict[str, Any]) -> None:
    assert "docker local: no container carries the labels ['watcher.enable=true']" in "\n".join(
        problems(check(fleet, [FakeContainer("x", {}, id="x")]))
    )
    port = closed_port()
    settings = Settings(**{**fleet, "engines": {"far": f"tcp://127.0.0.1:{port}"}})
    found = problems(list(Doctor(settings, timeout_s=2).run()))
    assert any(
        p.startswith(f"docker far (tcp://127.0.0.1:{port}): the engine does not answer: connection refused")
        for p in found
    )


def test_a_bad_pack_is_reported_at_file_line_col(fleet: dict[str, Any], tmp_path: Path) -> None:
    pack = tmp_path / "bad.yaml"
    pack.write_text("name: bad\nrules:\n  - id: x\n    match: ['(']\n    predicts: oom\n")
    found = problems(check({**fleet, "packs": [pack]}))
    assert found and all(p.startswith(f"rule pack: {pack}:") for p in found)
    assert found[0].split(":")[2].isdigit()  # rule pack: FILE:LINE:COL: ...


def run_cli(tmp_path: Path, env: dict[str, str], *args: str) -> Any:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return CliRunner().invoke(app, ["doctor", *args], env=env)
    finally:
        os.chdir(cwd)


def test_cli_redacts_secrets_and_exits_1_on_problems(tmp_path: Path) -> None:
    port = closed_port()
    env = {
        "WATCHER_ENGINES": json.dumps({"far": f"tcp://127.0.0.1:{port}"}),
        "WATCHER_PROMETHEUS_URL": f"http://admin:hunter2secret@127.0.0.1:{port}/?token=querysecret123",
        "WATCHER_API_TOKEN": "apitokensecret",
        "WATCHER_STORE": str(tmp_path / "nope" / "w.db"),
    }
    result = run_cli(tmp_path, env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    for secret in ("hunter2secret", "querysecret123", "apitokensecret"):
        assert secret not in result.output
    assert '  api_token: "***"' in result.output and f"http://127.0.0.1:{port}/" in result.output
    assert "problem: prometheus" in result.output and "problem: docker far" in result.output
    assert list(tmp_path.iterdir()) == []  # doctor created nothing


def test_cli_names_the_config_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "watcher.yaml"
    config.write_text("lb: nginx\n\nprometheus_interval_s: -1\n")
    result = run_cli(tmp_path, {}, "--config", str(config))
    assert result.exit_code == 1
    assert f"problem: configuration: {config}:3: prometheus_interval_s:" in result.output


def test_config_errors_name_the_line_of_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "w.yaml"
    config.write_text("# settings\nlb: nginx\nnot_a_setting: 1\n")
    with pytest.raises(ConfigError, match=rf"^{config}:3: not_a_setting: unknown setting"):
        load_settings(config)


def test_read_only_commands_create_no_file(tmp_path: Path) -> None:
    """Run in an empty directory with default settings (store ./watcher.db): it stays empty."""
    log = tmp_path.parent / f"{tmp_path.name}-lines.log"
    log.write_text("2024-01-01 OOM killed\n")
    port = closed_port()
    env = {"WATCHER_ENGINES": json.dumps({"far": f"tcp://127.0.0.1:{port}"})}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        runner = CliRunner()
        assert runner.invoke(app, ["incidents"]).exit_code == 2
        assert runner.invoke(app, ["rules", "lint", str(SHIPPED_RULES / "docker.yaml")]).exit_code == 0
        explained = runner.invoke(app, ["rules", "explain", str(SHIPPED_RULES / "docker.yaml"), "--log", str(log)])
        assert explained.exit_code == 0
        assert runner.invoke(app, ["doctor"], env=env).exit_code == 1
    finally:
        os.chdir(cwd)
        log.unlink()
    assert list(tmp_path.iterdir()) == []
