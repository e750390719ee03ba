"""deploy/ checked with the real tools, as far as this machine allows (no registry).

- compose.yaml validates with ``docker compose config`` / ``docker-compose config`` (never ``up``);
- Prometheus config, rules and rule unit tests pass promtool; Alertmanager config passes amtool;
- nginx.conf passes ``nginx -t`` with a stub upstream (prefix in a temp dir, loopback servers);
- the socket proxy (watcher/guard_proxy.py) allows exactly the watcher's Docker API calls, on
  labelled containers only, against the real engine, and refuses the rest (403) -- including every
  exec body that talked the old HAProxy regex allow-list around;
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
from typing import Any

import docker
import pytest
import requests

from testbed.images import base_tag
from testbed.ports import free_port, port_is_open
from watcher.actions.docker import DockerRestarter
from watcher.inventory import Inventory, LabelNames
from watcher.model import Target

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
def guard_run_id() -> str:
    """The value of LABEL that the guard in :func:`socket_proxy` lets through (one per test)."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def socket_proxy(tmp_path: Path, guard_run_id: str) -> Iterator[str]:
    """watcher/guard_proxy.py (what compose runs as socket-proxy) on a loopback port.

    It lets per-container calls through only for containers labelled ``LABEL=guard_run_id``.
    """
    if not Path("/var/run/docker.sock").exists():
        pytest.skip("no /var/run/docker.sock")
    port = free_port()
    log = (tmp_path / "guard.log").open("w")
    cmd = [sys.executable, "-m", "watcher.guard_proxy", f"--listen=127.0.0.1:{port}"]
    cmd += ["--socket=/var/run/docker.sock", f"--allow-label={LABEL}={guard_run_id}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not port_is_open(port):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "guard.log").read_text()
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


def _sleeper(client: docker.DockerClient, labels: dict[str, str]) -> Any:
    """A container that does nothing, on no network at all (the tests never create networks)."""
    return client.containers.run(base_tag(), ["sleep", "300"], detach=True, network_mode="none", labels=labels)


def test_socket_proxy_allows_the_watchers_calls_on_labelled_containers(
    docker_client: docker.DockerClient, socket_proxy: str, guard_run_id: str
) -> None:
    target = _sleeper(docker_client, {LABEL: guard_run_id, "watcher.service": "svc"})
    proxied = docker.DockerClient(base_url=socket_proxy, version="auto")
    inventory = Inventory({"local": proxied}, LabelNames(selector=(f"{LABEL}={guard_run_id}",)))
    try:
        c = proxied.containers.get(target.name)  # by name, as DockerRestarter and ContainerNginxReload do
        assert proxied.ping()
        assert [x.id for x in proxied.containers.list(filters={"label": f"{LABEL}={guard_run_id}"})] == [target.id]
        assert c.attrs["State"]["Running"]
        assert "PID" in c.top()["Titles"]
        assert "memory_stats" in c.stats(stream=False)
        assert isinstance(c.logs(tail=1, timestamps=True), bytes)
        list(proxied.events(since=int(time.time()) - 60, until=int(time.time()), decode=True))
        c.kill(signal="HUP")
        # the watcher's own code through the proxy: the inventory (list, inspect, events) and a restart
        inventory.start()
        (watched,) = inventory.snapshot().current()
        assert watched.id == target.id and watched.running
        state = DockerRestarter({"local": proxied}, start_timeout_s=30).restart(Target(target.name), 0)
        assert state["running"] and state["started_at"] != watched.started_at
        deadline = time.monotonic() + 15  # the restart arrives as events, through the proxy's stream
        while next(inventory.snapshot().current()).started_at == watched.started_at:
            assert time.monotonic() < deadline, "the inventory never saw the restart through the proxy"
            time.sleep(0.2)
    finally:
        inventory.stop()
        proxied.close()
        target.remove(force=True)


def test_socket_proxy_refuses_containers_without_the_label(
    docker_client: docker.DockerClient, socket_proxy: str, guard_run_id: str
) -> None:
    other = _sleeper(docker_client, {LABEL: "someone-else"})
    proxied = docker.DockerClient(base_url=socket_proxy, version="auto")
    try:
        started = docker_client.api.inspect_container(other.id)["State"]["StartedAt"]
        api = proxied.api
        for ref in (other.id, other.name, other.id[:12]):
            calls = {
                "inspect": lambda r=ref: api.inspect_container(r),  # its environment holds secrets
                "restart": lambda r=ref: api.restart(r, timeout=0),
                "kill -s HUP": lambda r=ref: api.kill(r, signal="HUP"),
                "top": lambda r=ref: api.top(r),
                "logs": lambda r=ref: api.logs(r, tail=1),
                "stats": lambda r=ref: api.stats(r, stream=False),
            }
            assert {name: _status(call) for name, call in calls.items()} == dict.fromkeys(calls, 403), ref
        assert docker_client.api.inspect_container(other.id)["State"]["StartedAt"] == started  # never restarted
        assert _status(lambda: proxied.api.inspect_container("no-such-container-" + guard_run_id)) == 404
    finally:
        proxied.close()
        other.remove(force=True)


# What talked HAProxy's regex allow-list around: Docker decodes JSON keys case-insensitively, the
# last duplicate wins, and whitespace is free. Each one is a root shell through exec.
_PAD = " " * 20_000
EXEC_BYPASS_BODIES = {
    "cmd twice after a newline": '{"Cmd": ["nginx", "-t"],\n"cmd": ["sh", "-c", "id"]}',
    "privileged with a space": '{"Cmd": ["nginx", "-t"], "Privileged" : true}',
    "privileged with a tab": '{"Cmd": ["nginx", "-t"], "Privileged":\ttrue}',
    "user with a space": '{"Cmd": ["nginx", "-t"], "User" : "root"}',
    "forbidden keys after a 20 KB pad": '{"Cmd": ["nginx", "-t"],' + _PAD + '"cMd": ["sh"], "PRIVILEGED": true}',
    "mixed-case keys": '{"cMD": ["sh", "-c", "id"], "pRiViLeGeD": true, "uSeR": "root"}',
    "the one command the old list allowed": '{"Cmd": ["nginx", "-t"]}',
}


@pytest.mark.parametrize("body", list(EXEC_BYPASS_BODIES.values()), ids=list(EXEC_BYPASS_BODIES))
def test_socket_proxy_refuses_every_exec_body(
    docker_client: docker.DockerClient, socket_proxy: str, guard_run_id: str, body: str
) -> None:
    target = _sleeper(docker_client, {LABEL: guard_run_id})  # labelled: refused for the call, not the container
    base = socket_proxy.replace("tcp://", "http://")
    session = requests.Session()
    session.trust_env = False
    try:
        for path in (f"/v1.41/containers/{target.id}/exec", f"/containers/{target.name}/exec"):
            resp = session.post(base + path, data=body.encode(), headers={"Content-Type": "application/json"})
            assert resp.status_code == 403, resp.text
        assert not docker_client.api.inspect_container(target.id)["ExecIDs"]  # no exec instance on the engine
    finally:
        session.close()
        target.remove(force=True)


def test_socket_proxy_refuses_everything_else(
    docker_client: docker.DockerClient, socket_proxy: str, guard_run_id: str
) -> None:
    target = _sleeper(docker_client, {LABEL: guard_run_id})
    proxied = docker.DockerClient(base_url=socket_proxy, version="auto")
    base = socket_proxy.replace("tcp://", "http://")
    session = requests.Session()
    session.trust_env = False
    try:
        c = proxied.containers.get(target.id)
        assert _status(lambda: c.kill(signal="KILL")) == 403
        assert _status(lambda: c.exec_run(["nginx", "-t"])) == 403
        assert _status(lambda: proxied.api.create_container(base_tag(), ["true"])) == 403
        assert _status(lambda: c.stop(timeout=0)) == 403
        assert _status(lambda: c.remove(force=True)) == 403
        assert _status(lambda: c.attach(stream=False)) == 403
        assert _status(lambda: c.top(ps_args="eww")) == 403  # `ps e` prints process environments
        assert _status(lambda: proxied.images.list()) == 403
        assert _status(lambda: proxied.info()) == 403
        assert _status(lambda: proxied.volumes.list()) == 403
        kill = f"{base}/containers/{target.id}/kill"
        assert session.post(kill + "?signal=HUP&signal=KILL").status_code == 403  # Go takes the first, we refuse
        assert session.post(kill + "?signal=HUP", data=b'{"x": 1}').status_code == 403  # no body on any call
        chunked = session.post(kill + "?signal=HUP", data=iter([b"{}"]))  # Transfer-Encoding: chunked
        assert chunked.status_code == 403
        upgrade = {"Connection": "Upgrade", "Upgrade": "tcp"}
        assert session.post(f"{base}/containers/{target.id}/attach?stream=1", headers=upgrade).status_code == 403
        assert session.get(f"{base}/containers/{target.id}/json", headers=upgrade).status_code == 403
        assert session.get(f"{base}/containers/%2e%2e/json").status_code == 403
        assert not docker_client.api.inspect_container(target.id)["ExecIDs"]
        assert docker_client.api.inspect_container(target.id)["State"]["Running"]
    finally:
        session.close()
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
