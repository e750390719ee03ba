"""Start-up failures are one clear line, never a traceback (issue #15): an engine that is down is
waited for, a port in use stops the start with its address."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import docker
import pytest

from watcher.inventory import make_clients

ROOT = Path(__file__).resolve().parents[2]


def _watcher(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    config = tmp_path / "watcher.yaml"
    config.write_text(
        f'engines: {{local: "unix://{tmp_path}/nothing.sock"}}\napi_listen: 127.0.0.1:{port}\nstore: {tmp_path}/w.db\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHER_", "DOCKER_"))}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "watcher.cli", "run", "--config", str(config)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_building_a_client_for_an_engine_that_is_down_does_not_raise(tmp_path: Path) -> None:
    clients = make_clients({"local": f"unix://{tmp_path}/nothing.sock"})
    with pytest.raises(docker.errors.DockerException):  # the first request fails, like any request
        clients["local"].containers.list()


def test_engine_down_at_start_waits_not_ready_with_the_reason_one_line_each(tmp_path: Path) -> None:
    port = _free_port()
    proc = _watcher(tmp_path, port)
    try:
        ready: dict[str, object] = {}
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except urllib.error.HTTPError as exc:  # 503: not ready
                ready = json.loads(exc.read())
                break
            except OSError:
                time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()[0]
        assert ready.get("ready") is False
        engine = ready["engines"]["local"]  # type: ignore[index]
        assert engine["reachable"] is False and "Error while fetching server API version" in engine["error"]
        time.sleep(11)  # two more rescans (5 s) and event-stream retries
        assert proc.poll() is None, "the watcher exited while the engine was down"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "Traceback" not in out
    assert out.count("cannot list containers") == 1, out
    assert out.count("event stream failed") == 1, out


def test_api_port_in_use_exits_2_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _watcher(tmp_path, port)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2, out
    assert f"error: cannot listen on 127.0.0.1:{port} (api_listen): Address already in use" in out
    assert "Traceback" not in out


def test_the_engine_is_reached_at_its_own_address_whatever_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import http.server
    import threading

    class Engine(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"ApiVersion": "1.43"} if self.path.endswith("/version") else []).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dead = _free_port()  # a proxy nobody runs: a request sent there fails
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{dead}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        client = make_clients({"e1": f"tcp://127.0.0.1:{server.server_address[1]}"})["e1"]
        assert client.api.containers(all=True) == []
    finally:
        server.shutdown()
        server.server_close()
