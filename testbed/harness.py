"""The whole watcher (live driver + policy + executor) wired to a running testbed.

Integration tests, the chaos benchmark and the demo all watch the testbed the same way: the
replicas' logs, Docker events and stats, the testbed's Prometheus (the packs' ``series:``), Nginx's
access and error logs (host files here), assembled as ``watcher run`` assembles it
(:mod:`watcher.assembly`), with the real Nginx
(or HAProxy) as the traffic shifter, real Docker restarts, verification against the testbed's
model repository and alerts to its Alertmanager. ``python -m testbed.harness SPEC.json``
runs it in a separate process, so a test can SIGKILL a watcher mid-playbook.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker

from testbed.replicas import TESTBED_LABEL
from watcher.actions.alerts import AlertmanagerAlerter
from watcher.actions.base import Alerter, TrafficShifter
from watcher.actions.haproxy import HAProxyShifter
from watcher.actions.nginx import HostNginxReload, NginxShifter
from watcher.assembly import assemble
from watcher.config import SHIPPED_CONFIG, Settings, load_settings
from watcher.live import LiveConfig
from watcher.model import Target
from watcher.playbook.executor import ExecutorConfig
from watcher.policy import GuardConfig
from watcher.rulepack.compile import CompileOptions, compile_packs
from watcher.rulepack.schema import Defaults
from watcher.rules import SHIPPED_RULES
from watcher.sources.file_logs import FileSpec

RULES = SHIPPED_RULES


@dataclass
class HarnessSpec:
    """Everything needed to watch one testbed, serialisable so another process can do it."""

    run_id: str
    store: str
    model_repo: str
    nginx_dir: str | None = None
    nginx_binary: str = "/usr/sbin/nginx"
    haproxy_socket: str | None = None
    haproxy_backend: str = ""
    alertmanager_url: str | None = None
    lb: str = "nginx"
    dry_run: bool = False
    guard: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] | None = None  # override every pack's guard-rail defaults (tests)
    packs: list[str] = field(default_factory=lambda: [str(RULES)])
    # how the watcher detects and how fast: the shipped settings file, as Compose and Kubernetes run it;
    # the testbed sets on top only where things are (site_overrides). The three below are experiment
    # knobs for a benchmark or test that says so (None: the file's value).
    config: str = str(SHIPPED_CONFIG)
    prometheus_url: str | None = None
    stats_interval_s: float | None = None  # 0: off
    prometheus_interval_s: float | None = None
    prometheus_window: str | None = None
    # every engine the replicas run on, name -> unix socket (None: the shared engine only, "local")
    engine_sockets: dict[str, str] | None = None

    @classmethod
    def for_testbed(cls, bed: Any, store: Path, **kwargs: Any) -> HarnessSpec:
        return cls(
            run_id=bed.run_id,
            store=str(store),
            model_repo=str(bed.model_repo),
            nginx_dir=str(bed.nginx.workdir) if bed.nginx else None,
            nginx_binary=bed.nginx.binary_path() if bed.nginx else "/usr/sbin/nginx",
            haproxy_socket=str(bed.haproxy.socket_path) if bed.haproxy else None,
            haproxy_backend=bed.config.served_model,
            alertmanager_url=f"http://127.0.0.1:{bed.alertmanager.port}" if bed.alertmanager else None,
            prometheus_url=bed.prometheus.url if getattr(bed, "prometheus", None) is not None else None,
            **{"engine_sockets": bed.engine_sockets() if getattr(bed, "extra_engines", None) else None, **kwargs},
        )

    def site_overrides(self) -> dict[str, Any]:
        """What the testbed sets on top of the settings file: addresses, paths, its containers, its
        load balancer, actions on or off (all in :data:`watcher.config.SITE_KEYS`)."""
        site: dict[str, Any] = {
            # "": the engine DOCKER_HOST names (the shared one); the testbed's own by their sockets
            "engines": {
                "local": "",
                **{n: f"unix://{p}" for n, p in (self.engine_sockets or {}).items() if n != "local"},
            },
            "label_selector": [f"{TESTBED_LABEL}={self.run_id}"],
            "store": self.store,
            "model_repo": self.model_repo,
            "prometheus_url": self.prometheus_url,
            "alertmanager_url": self.alertmanager_url,
            "lb": self.lb,
            "actions_enabled": not self.dry_run,
        }
        if self.nginx_dir:
            d = Path(self.nginx_dir)
            site.update(
                nginx_upstreams_file=str(d / "upstreams.conf"),
                nginx_pid_file=str(d / "nginx.master.pid"),
                nginx_conf=str(d / "nginx.conf"),
                nginx_binary=self.nginx_binary,
                nginx_error_log=str(d / "error.log"),
                log_files={"nginx": str(d / "access.log"), "nginx-error": str(d / "error.log")},
                lb_log_files=["nginx", "nginx-error"],
            )
        if self.haproxy_socket:
            site.update(haproxy_socket=self.haproxy_socket, haproxy_backend=self.haproxy_backend)
        return site

    def settings(self) -> Settings:
        """The settings this watcher runs: the file, the testbed's site values, then any experiment knob."""
        knobs = {
            key: value
            for key, value in (
                ("stats_interval_s", self.stats_interval_s),
                ("prometheus_interval_s", self.prometheus_interval_s),
                ("prometheus_window", self.prometheus_window),
            )
            if value is not None
        }
        return load_settings(Path(self.config), {**self.site_overrides(), **knobs})


class _NoAlerts(Alerter):
    def fire(self, alert: Any) -> None:
        return None

    def resolve(self, alert: Any) -> None:
        return None


class Watcher:
    """A running watcher on the testbed: ``.live`` (engine + sources) and ``.executor``."""

    def __init__(self, spec: HarnessSpec) -> None:
        self.spec = spec
        self.settings = settings = spec.settings()
        client = docker.from_env()
        selector = tuple(settings.label_selector)
        self.shifter = self._shifter(spec)
        ruleset = compile_packs(
            [Path(p) for p in spec.packs],
            CompileOptions(
                prometheus_target_label=settings.prometheus_target_label,
                prometheus_window=settings.prometheus_window,
                defaults=Defaults.model_validate(spec.defaults) if spec.defaults is not None else None,
            ),
        )
        files = [  # the load balancer's own logs: the only lines that may name a replica
            FileSpec(path, Target(name), load_balancer=name in settings.lb_log_files)
            for name, path in settings.log_files.items()
        ]
        # stats: an explicit knob wins; else the service's rule (off while Prometheus is configured)
        stats = (
            spec.stats_interval_s or None if spec.stats_interval_s is not None else settings.effective_stats_interval_s
        )
        parts = assemble(
            store=settings.store,
            clients={"local": client},
            ruleset=ruleset,
            live_config=LiveConfig(
                label_selector=selector,
                service_label=settings.service_label,
                upstream_label=settings.upstream_label,
                stats_interval_s=stats,
                prometheus_url=settings.prometheus_url,
                prometheus_target_label=settings.prometheus_target_label,
                prometheus_interval_s=settings.prometheus_interval_s,
                prometheus_window=settings.prometheus_window,
                files=files,
            ),
            shifter=self.shifter,
            alerter=AlertmanagerAlerter(spec.alertmanager_url) if spec.alertmanager_url else _NoAlerts(),
            guard=GuardConfig(dry_run=spec.dry_run, **spec.guard),
            executor_config=ExecutorConfig(model_repo=Path(spec.model_repo)),
        )
        self.store, self.journal, self.policy = parts.store, parts.journal, parts.policy
        self.fleet, self.executor, self.live = parts.fleet, parts.executor, parts.live
        self.parts, self.decisions = parts, parts.decisions

    @staticmethod
    def _shifter(spec: HarnessSpec) -> TrafficShifter:
        if spec.lb == "haproxy":
            assert spec.haproxy_socket, "haproxy socket required"
            return HAProxyShifter(Path(spec.haproxy_socket), spec.haproxy_backend)
        assert spec.nginx_dir, "nginx dir required"
        d = Path(spec.nginx_dir)
        reload = HostNginxReload(
            pid_file=d / "nginx.master.pid",
            nginx=spec.nginx_binary,
            args=("-q", "-p", f"{d}/", "-c", str(d / "nginx.conf")),
            error_log=d / "error.log",
        )
        return NginxShifter(d / "upstreams.conf", reload, access_log=d / "access.log", quiet_s=0.3)

    def start(self) -> Watcher:
        self.parts.start()
        return self

    def wait(self, timeout_s: float = 120.0) -> None:
        """Until the findings so far are decided and every incident they opened has finished."""
        self.decisions.drain(timeout_s)
        self.executor.wait(timeout_s)

    def stop(self) -> None:
        self.parts.stop(grace_s=120)
        self.store.close()

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    spec = HarnessSpec(**json.loads(Path(argv[0]).read_text()))
    watcher = Watcher(spec).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("watching", flush=True)
    stop.wait()
    watcher.stop()
    return 0


def write_spec(spec: HarnessSpec, path: Path) -> Path:
    path.write_text(json.dumps(asdict(spec)))
    return path


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
