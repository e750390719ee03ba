"""deploy/ checked with the real tools, as far as this machine allows (no registry).

- compose.yaml validates with ``docker compose config`` / ``docker-compose config`` (never ``up``);
- Prometheus config, rules and rule unit tests pass promtool; Alertmanager config passes amtool;
- nginx.conf passes ``nginx -t`` with a stub upstream (prefix in a temp dir, loopback servers);
- the socket proxy's HAProxy config allows exactly the watcher's Docker API calls against the
  real engine and refuses the rest (403);
- the watcher image builds offline from the locally built base image and a host-built wheelhouse,
  runs as a non-root user, reaches Docker only through the proxy, answers ``/healthz`` on
  127.0.0.1 (host networking) and Docker reports it healthy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from testbed.images import base_tag
from testbed.ports import free_port, port_is_open

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
LABEL = "serving-watcher.deploy-test"


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kwargs)  # type: ignore[call-overload]


def _need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if path is None:
        pytest.skip(f"{tool} is not installed (run make setup)")
    return path


# ------------------------------------------------------------------------------------ config checks


def test_compose_config_validates() -> None:
    env = {**os.environ, "WATCHER_API_TOKEN": "x"}
    if _run(["docker", "compose", "version"]).returncode == 0:
        cmd = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    else:
        pytest.skip("neither 'docker compose' nor 'docker-compose' is installed (Debian package docker-compose)")
    proc = _run([*cmd, "-f", str(DEPLOY / "compose.yaml"), "config", "-q"], env=env, cwd=DEPLOY)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_prometheus_config_rules_and_rule_tests(tmp_path: Path) -> None:
    promtool = _need("promtool")
    # the config names the rule file by its in-container path; check it beside a local copy
    cfg = (DEPLOY / "prometheus" / "prometheus.yml").read_text().replace("/etc/prometheus/alerts.yml", "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(cfg)
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    proc = _run([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run([promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run([promtool, "test", "rules", "alerts.test.yml"], cwd=DEPLOY / "prometheus")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alertmanager_config() -> None:
    proc = _run([_need("amtool"), "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_nginx_config_with_stub_upstream(tmp_path: Path) -> None:
    nginx = _need("nginx")
    logs = tmp_path / "logs"
    (tmp_path / "upstreams").mkdir()
    logs.mkdir()
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    conf = conf.replace("/etc/nginx/upstreams/", f"{tmp_path}/upstreams/").replace(
        "/var/log/watcher-nginx/", f"{logs}/"
    )
    conf = conf.replace("pid /var/run/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    if os.geteuid() == 0:
        conf = "user root;\n" + conf  # the image's default user (nginx) need not exist here
    (tmp_path / "nginx.conf").write_text(conf)
    upstreams = (DEPLOY / "nginx" / "upstreams.conf").read_text()
    stub = upstreams
    for i, name in enumerate(("tfs-1", "tfs-2", "tfs-3")):
        stub = stub.replace(f"server {name}:8501", f"server 127.0.0.1:{18501 + i}")
    assert stub != upstreams
    (tmp_path / "upstreams" / "upstreams.conf").write_text(stub)
    proc = _run([nginx, "-t", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf")])
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------ socket proxy


@pytest.fixture
def socket_proxy(tmp_path: Path) -> Iterator[str]:
    """The deploy/socket-proxy HAProxy config run by the host's haproxy on a loopback port."""
    haproxy = _need("haproxy")
    if not Path("/var/run/docker.sock").exists():
        pytest.skip("no /var/run/docker.sock")
    port = free_port()
    env = {**os.environ, "PROXY_BIND": f"127.0.0.1:{port}", "DOCKER_SOCKET": "/var/run/docker.sock"}
    cfg = str(DEPLOY / "socket-proxy" / "haproxy.cfg")
    check = _run([haproxy, "-c", "-f", cfg], env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (tmp_path / "haproxy.log").open("w")
    proc = subprocess.Popen([haproxy, "-db", "-f", cfg], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not port_is_open(port):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "haproxy.log").read_text()
            time.sleep(0.1)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _status(call: object) -> int:
    try:
        call()  # type: ignore[operator]
    except docker.errors.APIError as exc:
        return int(exc.status_code or 0)
    return 200


def test_socket_proxy_allows_only_the_watchers_calls(docker_client: docker.DockerClient, socket_proxy: str) -> None:
    run_id = uuid.uuid4().hex[:10]
    target = docker_client.containers.run(
        base_tag(), ["sleep", "300"], detach=True, network_mode="none", labels={LABEL: run_id}
    )
    proxied = docker.DockerClient(base_url=socket_proxy, version="auto")
    try:
        c = proxied.containers.get(target.id)
        # allowed: everything the watcher does
        assert proxied.ping()
        assert [x.id for x in proxied.containers.list(filters={"label": f"{LABEL}={run_id}"})] == [target.id]
        assert c.attrs["State"]["Running"]
        assert "PID" in c.top()["Titles"]
        assert "memory_stats" in c.stats(stream=False)
        assert isinstance(c.logs(tail=1, timestamps=True), bytes)
        events = proxied.events(since=int(time.time()) - 60, until=int(time.time()), decode=True)
        list(events)
        c.kill(signal="HUP")
        exec_result = c.exec_run(["nginx", "-t"])  # no nginx in this image: the engine, not the proxy, says so
        assert exec_result.exit_code != 0 and b"403" not in exec_result.output
        c.restart(timeout=0)
        # refused: anything else
        assert _status(lambda: c.kill(signal="KILL")) == 403
        assert _status(lambda: c.exec_run(["sh", "-c", "id"])) == 403
        assert _status(lambda: c.exec_run(["nginx", "-t"], privileged=True)) == 403
        assert _status(lambda: c.exec_run(["nginx", "-t"], user="root")) == 403
        assert _status(lambda: proxied.api.create_container(base_tag(), ["true"])) == 403
        assert _status(lambda: c.stop(timeout=0)) == 403
        assert _status(lambda: c.remove(force=True)) == 403
        assert _status(lambda: proxied.images.list()) == 403
        assert _status(lambda: proxied.info()) == 403
        assert _status(lambda: proxied.volumes.list()) == 403
    finally:
        proxied.close()
        target.remove(force=True)


# ------------------------------------------------------------------------------------ watcher image


def _context(tmp: Path) -> Path:
    """A minimal build context: the package (its rule packs are package data), the Dockerfile, a wheelhouse."""
    ctx = tmp / "ctx"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    ctx.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, ctx / name)
    shutil.copytree(REPO / "watcher", ctx / "watcher", ignore=ignore)
    (ctx / "deploy").mkdir()
    shutil.copy(DEPLOY / "Dockerfile", ctx / "deploy" / "Dockerfile")
    return ctx


def _digest(ctx: Path) -> str:
    h = hashlib.sha256(base_tag().encode())
    for path in sorted(p for p in ctx.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(ctx)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def watcher_image(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    if importlib.util.find_spec("watcher.service") is None:
        pytest.skip("watcher.service (the `watcher run` command) does not exist yet")
    ctx = _context(tmp_path_factory.mktemp("image"))
    tag = f"serving-watcher/watcher:{_digest(ctx)}"
    try:
        docker_client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    wheels = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--wheel-dir",
            str(ctx / ".wheelhouse"),
            str(ctx),
            "pip",
            "setuptools",
            "wheel",
        ],
    )
    if wheels.returncode != 0:
        pytest.fail(f"pip wheel failed (needs the package index once per dependency change):\n{wheels.stderr[-2000:]}")
    try:
        docker_client.images.build(
            path=str(ctx),
            dockerfile="deploy/Dockerfile",
            tag=tag,
            buildargs={"BASE": base_tag(), "WHEELHOUSE": ".wheelhouse"},
            network_mode="none",
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
        pytest.fail(f"docker build of the watcher image failed: {exc.msg}\n{log[-3000:]}")
    return tag


def test_watcher_image_starts_and_answers_healthz(
    docker_client: docker.DockerClient, watcher_image: str, socket_proxy: str
) -> None:
    image = docker_client.images.get(watcher_image)
    assert image.attrs["Config"]["User"] not in ("", "0", "root", "0:0")
    assert image.attrs["Config"]["Entrypoint"] == ["watcher", "run"]
    assert "/healthz" in " ".join(image.attrs["Config"]["Healthcheck"]["Test"])
    port = free_port()
    run_id = uuid.uuid4().hex[:10]
    container = docker_client.containers.run(
        watcher_image,
        detach=True,
        network_mode="host",
        labels={LABEL: run_id},
        environment={
            "DOCKER_HOST": socket_proxy,  # Docker only through the allow-listing proxy
            "WATCHER_API_LISTEN": f"127.0.0.1:{port}",
            "WATCHER_ACTIONS_ENABLED": "false",
            # watch only this test's (non-existent) replicas, not other stacks on this engine
            "WATCHER_LABEL_SELECTOR": f'["{LABEL}.replica={run_id}"]',
        },
        healthcheck={
            "test": image.attrs["Config"]["Healthcheck"]["Test"],
            "interval": 1_000_000_000,
            "timeout": 5_000_000_000,
            "retries": 3,
            "start_period": 0,
        },
    )
    session = requests.Session()
    session.trust_env = False
    try:
        deadline = time.monotonic() + 60
        ok = False
        while time.monotonic() < deadline and not ok:
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode(errors="replace")[-3000:]
            try:
                ok = session.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                time.sleep(0.5)
        assert ok, f"/healthz never answered 200:\n{container.logs().decode(errors='replace')[-3000:]}"
        while time.monotonic() < deadline:
            container.reload()
            if container.attrs["State"].get("Health", {}).get("Status") == "healthy":
                break
            time.sleep(0.5)
        assert container.attrs["State"]["Health"]["Status"] == "healthy", container.attrs["State"]["Health"]
        # the event stream may connect a moment after /healthz answers: wait (bounded) for readiness
        deadline = time.monotonic() + 30
        ready = session.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        while ready.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            ready = session.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        assert ready.status_code == 200, ready.text  # sources connected through the proxy, store writable
    finally:
        session.close()
        container.remove(force=True)
