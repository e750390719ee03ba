"""The watcher as a user deploys it, on the testbed: the chaos benchmark's ``watcher`` strategy (issue #15).

``watcher run --config deploy/watcher.yaml`` runs as its own process with the environment a site
gives it (``WATCHER_*`` for the keys in :data:`watcher.config.SITE_KEYS` only: addresses, paths,
which containers and load balancer) and reaches Docker only through the shipped socket proxy
(``python -m watcher.guard_proxy``, what Compose's ``socket-proxy`` service runs), allowed the
testbed's replicas alone. It rewrites the real Nginx's upstream file and signals its master, as it
signals the Nginx container in Compose. What it found and did is read back the way an operator
reads it: ``watcher findings --json`` and ``watcher incidents --json`` on its store, its JSON log.
Nothing is read from inside the process, so no figure can come from a configuration users do not run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from testbed.engines import docker_socket
from testbed.harness import HarnessSpec
from testbed.ports import free_port, port_is_open
from watcher.config import SITE_KEYS


def site_environment(spec: HarnessSpec) -> dict[str, str]:
    """The ``WATCHER_*`` variables a site sets for this testbed: its site values, then any experiment
    knob the spec names (a benchmark row says so). Lists and mappings as JSON, booleans as words."""
    values: dict[str, Any] = dict(spec.site_overrides())
    for key in ("stats_interval_s", "prometheus_interval_s", "prometheus_window"):
        if getattr(spec, key) is not None:
            values[key] = getattr(spec, key)
    env: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (dict, list, tuple)):
            text = json.dumps(value)
        else:
            text = str(value)
        env[f"WATCHER_{key.upper()}"] = text
    return env


class DeployedWatcher:
    """``watcher run`` and its socket proxy as two processes (their PIDs kept, only they are ended)."""

    def __init__(self, spec: HarnessSpec, workdir: Path, packs: list[str] | None = None) -> None:
        self.spec = spec
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        # one socket proxy per engine, as each Docker host runs its own next to its engine
        self.sockets = spec.engine_sockets or {"local": docker_socket()}
        self.proxy_ports = {name: free_port() for name in self.sockets}
        self.proxy_port = self.proxy_ports["local"]
        self.api_port = free_port()
        self.store = Path(spec.store)
        self.log_path = workdir / "watcher.log"
        self.proxy_log_path = workdir / "socket-proxy.log"
        site = {k.removeprefix("WATCHER_").lower() for k in site_environment(spec)}
        knobs = site - SITE_KEYS
        self.knobs = sorted(knobs)  # experiment knobs beyond the site's values, for the benchmark row
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")},
            "WATCHER_CONFIG": spec.config,
            **site_environment(spec),
            "WATCHER_API_LISTEN": f"127.0.0.1:{self.api_port}",
            "WATCHER_API_TOKEN": secrets.token_urlsafe(16),  # a site sets one; the control endpoints need it
            "DOCKER_HOST": f"tcp://127.0.0.1:{self.proxy_port}",
            "WATCHER_ENGINES": json.dumps({n: f"tcp://127.0.0.1:{port}" for n, port in self.proxy_ports.items()}),
        }
        if packs:
            self.env["WATCHER_PACKS"] = json.dumps(packs)
        self.proxies: dict[str, subprocess.Popen[bytes]] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = requests.Session()
        self.http.trust_env = False

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, ready_timeout_s: float = 60.0) -> DeployedWatcher:
        selector = ",".join(self.spec.site_overrides()["label_selector"])
        logs = {n: self.proxy_log_path.with_name(f"socket-proxy-{n}.log") for n in self.sockets if n != "local"}
        logs["local"] = self.proxy_log_path
        for name, socket in self.sockets.items():
            self.proxies[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "watcher.guard_proxy",
                    f"--listen=127.0.0.1:{self.proxy_ports[name]}",
                    f"--socket={socket}",
                    f"--allow-label={selector}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=logs[name].open("wb"),
            )
        deadline = time.monotonic() + 15
        for name, proxy in self.proxies.items():
            while not port_is_open(self.proxy_ports[name]):
                if proxy.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"socket proxy for {name} did not start: {logs[name].read_text()[-2000:]}")
                time.sleep(0.1)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher.cli", "run"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("wb"),
        )
        deadline = time.monotonic() + ready_timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"watcher run exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                reply = self.http.get(f"http://127.0.0.1:{self.api_port}/readyz", timeout=2)
                if reply.status_code == 200:
                    return self
                last = reply.text
            except requests.RequestException as exc:
                last = str(exc)
            time.sleep(0.25)
        raise RuntimeError(f"watcher run not ready in {ready_timeout_s:g} s: {last}")

    def wait_idle(self, timeout_s: float = 60.0) -> None:
        """Until no incident is open, twice in a row a second apart (a finding just raised opens one
        within the decision thread's next pass); TimeoutError when one still runs."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while time.monotonic() < deadline:
            quiet = quiet + 1 if not self.incidents(open_only=True) else 0
            if quiet >= 2:
                return
            time.sleep(1.0)
        raise TimeoutError(f"an incident is still open after {timeout_s:g} s")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        code: int | None = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait(timeout=10)
        for proxy in self.proxies.values():
            if proxy.poll() is None:
                proxy.send_signal(signal.SIGTERM)
                try:
                    proxy.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proxy.kill()
                    proxy.wait(timeout=10)
        return code

    # -- reading back, as an operator does ---------------------------------------------------------
    def _cli_json(self, *args: str) -> Any:
        proc = subprocess.run(
            [sys.executable, "-m", "watcher.cli", *args, "--store", str(self.store), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"watcher {' '.join(args)} exited {proc.returncode}: {proc.stderr[-1000:]}")
        return json.loads(proc.stdout)

    def incidents(self, open_only: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._cli_json("incidents", *(["--open"] if open_only else []))
        return result

    def findings(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._cli_json("findings", "--limit", "100000")
        return result

    def log_events(self, message: str) -> list[dict[str, Any]]:
        """The watcher's JSON log lines whose message is ``message`` (``refused``, ``failed``...)."""
        out: list[dict[str, Any]] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("msg") == message or doc.get("message") == message:
                out.append(doc)
        return out

    def __enter__(self) -> DeployedWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
