"""The loopback-only testbed: N simulator replicas behind Nginx, scraped by Prometheus.

With ``engines`` > 1 the replicas are spread round-robin over that many Docker engines: the shared
one (named ``local``) and ``engines - 1`` of the testbed's own (:class:`testbed.engines.ExtraEngine`,
named ``e1``, ``e2``...: separate ``dockerd`` processes with their own socket, data root, exec root
and PID file), as a fleet spreads one service over several hosts. One Nginx upstream stays in front
of all of them: the replicas are one service, so the watcher's capacity rails for that service must
hold across engines, which one upstream per engine would hide.

Tests, benchmarks and the demo all stand on this one stack, so what the watcher is measured
against is what it is tested against. Everything binds 127.0.0.1 on ports picked free at start;
containers use host networking (no Docker networks are created). ``down()`` removes exactly
what ``up()`` made: the containers carrying this run's label and the host processes by PID.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from testbed.engines import ExtraEngine, docker_socket
from testbed.images import REPO_ROOT, ensure_images, ensure_oip_image
from testbed.oip_replicas import MODEL as OIP_MODEL
from testbed.oip_replicas import PROTOCOL, SERVERS, ServedModel, served_model, start_oip_replica
from testbed.ports import free_ports
from testbed.replicas import (
    TESTBED_LABEL,
    Replica,
    ReplicaSpec,
    remove_testbed_containers,
    start_replica,
)
from testbed.servers.models import write_smoke_repo
from testbed.services import Alertmanager, HAProxy, Nginx, Prometheus, ScrapeTarget, Upstream

MODELS_DIR = REPO_ROOT / "models"


@dataclass
class TestbedConfig:
    __test__ = False  # not a pytest test class
    replicas: int = 3
    weights: tuple[int, ...] = (3, 2, 1)
    model: str = "half_plus_two"
    memory_limit: str = "256m"
    restart_policy: str = "always"
    proxy_timeout_s: float = 3.0
    scrape_interval_s: float = 1.0
    health_interval_s: float = 2.0
    health_timeout_s: float = 2.0  # curl --max-time of the health check (Docker's timeout is this + 1 s)
    health_retries: int = 3
    faults: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    with_alertmanager: bool = True
    with_haproxy: bool = False
    seed: int = 0
    workdir: Path | None = None  # default: a fresh temp dir, removed by down()
    engines: int = 1  # Docker engines the replicas are spread over (1: the shared one only)
    noise_lines_per_s: float = 0.0  # every replica prints TF-Serving-style noise lines at this rate
    # tfsim (the simulator) or a real server (testbed/oip_replicas.py), whose model is always "lin"
    server: str = "tfsim"

    @property
    def served_model(self) -> str:
        return self.model if self.server == "tfsim" else OIP_MODEL


class Testbed:
    """Start with ``up()`` (or as a context manager), tear down with ``down()``."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, config: TestbedConfig | None = None) -> None:
        self.config = config or TestbedConfig()
        self.run_id = uuid.uuid4().hex[:10]
        self.client = docker.from_env()
        self._own_workdir = self.config.workdir is None
        self.workdir = self.config.workdir or Path(tempfile.mkdtemp(prefix="watcher-testbed-"))
        self.model_repo = self.workdir / "models"
        self.replicas: list[Replica] = []
        self.extra_engines: dict[str, ExtraEngine] = {}
        self.nginx: Nginx | None = None
        self.haproxy: HAProxy | None = None
        self.prometheus: Prometheus | None = None
        self.alertmanager: Alertmanager | None = None
        self.startup_s: float = 0.0

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Testbed:
        started = time.monotonic()
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _up(self) -> None:
        cfg = self.config
        if len(cfg.weights) < cfg.replicas:
            raise ValueError(f"{cfg.replicas} replicas need {cfg.replicas} weights, got {cfg.weights}")
        if cfg.engines < 1:
            raise ValueError(f"engines must be >= 1, got {cfg.engines}")
        if cfg.server != "tfsim" and cfg.server not in SERVERS:
            raise ValueError(f"server must be tfsim or one of {SERVERS}, got {cfg.server!r}")
        model = cfg.served_model
        if cfg.server == "tfsim":
            image = ensure_images(self.client)["simulator"].tag
            shutil.copytree(MODELS_DIR / cfg.model, self.model_repo / cfg.model)
        else:
            image = ensure_oip_image(self.client).tag
            write_smoke_repo(self.model_repo, model)  # what the watcher verifies a restarted replica against
        clients = {"local": self.client}
        for n in range(1, cfg.engines):
            engine = ExtraEngine(name=f"e{n}")
            self.extra_engines[engine.name] = engine  # before start: down() closes it whatever happens
            engine.start()
            engine.copy_image(self.client, image)
            clients[engine.name] = engine.client()
        placement = list(clients)
        ports = free_ports(2 * cfg.replicas + 5)
        for i in range(cfg.replicas):
            faults = dict(cfg.faults.get(i, {}))
            if cfg.noise_lines_per_s > 0:
                faults.setdefault("noise", {"lines_per_s": cfg.noise_lines_per_s})
            labels = {
                TESTBED_LABEL: self.run_id,
                "watcher.enable": "true",
                "watcher.service": model,
                "watcher.model": model,
                "watcher.replica": str(i),
                # how the load balancer addresses this replica: lets the watcher attribute an
                # Nginx line about "upstream 127.0.0.1:port" to this container
                "watcher.upstream": f"127.0.0.1:{ports[2 * i]}",
            }
            if cfg.server != "tfsim":
                labels["watcher.protocol"] = PROTOCOL[cfg.server]
            spec = ReplicaSpec(
                name=f"{cfg.server}-{self.run_id}-{i}",
                rest_port=ports[2 * i],
                admin_port=ports[2 * i + 1],
                model=model,
                model_repo=self.model_repo,
                state_dir=self.workdir / f"state-{i}",
                image=image,
                memory_limit=cfg.memory_limit,
                restart_policy=cfg.restart_policy,
                faults=faults,
                labels=labels,
                health_interval_s=cfg.health_interval_s,
                health_timeout_s=cfg.health_timeout_s,
                health_retries=cfg.health_retries,
                seed=cfg.seed + i,
                engine=placement[i % len(placement)],
                server=cfg.server,
            )
            start = start_replica if cfg.server == "tfsim" else start_oip_replica
            self.replicas.append(start(clients[spec.engine], spec))
        lb_port, prom_port, am_port, haproxy_port, _spare = ports[2 * cfg.replicas :]
        upstreams = [
            Upstream(name=r.name, address=r.address, weight=w) for r, w in zip(self.replicas, cfg.weights, strict=False)
        ]
        self.nginx = Nginx(self.workdir / "nginx", lb_port, upstreams, proxy_timeout_s=cfg.proxy_timeout_s)
        self.nginx.start()
        if cfg.with_haproxy:
            self.haproxy = HAProxy(self.workdir / "haproxy", haproxy_port, model, upstreams)
            self.haproxy.start()
        if cfg.with_alertmanager:
            self.alertmanager = Alertmanager(self.workdir / "alertmanager", am_port)
            self.alertmanager.start()
        targets = [
            ScrapeTarget(
                job="tfserving" if cfg.server == "tfsim" else cfg.server,
                address=r.metrics_address,
                metrics_path=r.metrics_path,
                labels={"replica": r.name, "model": model},
            )
            for r in self.replicas
        ]
        self.prometheus = Prometheus(
            self.workdir / "prometheus", prom_port, scrape_interval_s=cfg.scrape_interval_s, targets=targets
        )
        self.prometheus.start()
        for replica in self.replicas:
            if "fail_load" in replica.spec.faults or "hang" in replica.spec.faults:
                continue
            replica.wait_available(timeout_s=60 if cfg.server == "tfsim" else 120)

    def down(self) -> None:
        for service in (self.prometheus, self.alertmanager, self.haproxy, self.nginx):
            if service is not None:
                service.stop()
        remove_testbed_containers(self.client, self.run_id)
        for engine in self.extra_engines.values():
            engine.close()  # removes its containers, stops its dockerd by PID, deletes its directory
        self.extra_engines = {}
        self.replicas = []
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- conveniences -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self.nginx is not None, "testbed is not up"
        return f"http://127.0.0.1:{self.nginx.listen_port}"

    def served(self) -> ServedModel:
        """What a client of this testbed sends (model, rows, protocol) and each version's answers."""
        if self.config.server != "tfsim":
            return served_model(self.config.server)
        import json

        smoke = {
            p.parent.name: json.loads(p.read_text()) for p in (MODELS_DIR / self.config.model).glob("*/smoke.json")
        }
        newest = max(smoke, key=int)
        predictions = {v: s["predictions"] for v, s in smoke.items()}
        return ServedModel(self.config.model, smoke[newest]["instances"], predictions, "tfserving")

    def engine_sockets(self) -> dict[str, str]:
        """Each engine's name and unix socket path: what a watcher's ``engines`` setting points at."""
        return {"local": docker_socket(), **{n: str(e.socket) for n, e in self.extra_engines.items()}}

    def publish_version(self, version: int, model_json: dict[str, Any] | None = None) -> Path:
        """Copy the newest version as ``version`` (optionally with another description) into the
        model repository every replica polls, as a deploy pipeline would."""
        import json

        if self.config.server != "tfsim":
            raise ValueError(f"publish_version: {self.config.server} replicas do not poll a model repository")
        model_dir = self.model_repo / self.config.model
        newest = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        staging = model_dir / f".staging-{version}"
        shutil.copytree(newest, staging)
        if model_json is not None:
            (staging / "model.json").write_text(json.dumps(model_json))
        target = model_dir / str(version)
        staging.rename(target)  # atomic: a poller never sees a half-written version
        return target

    def describe(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workdir": str(self.workdir),
            "nginx": self.url if self.nginx else None,
            "prometheus": f"http://127.0.0.1:{self.prometheus.port}" if self.prometheus else None,
            "alertmanager": f"http://127.0.0.1:{self.alertmanager.port}" if self.alertmanager else None,
            "haproxy": f"http://127.0.0.1:{self.haproxy.listen_port}" if self.haproxy else None,
            "engines": self.engine_sockets(),
            "replicas": [
                {"name": r.name, "engine": r.spec.engine, "rest": r.rest_url, "admin": r.admin_url, "weight": w}
                for r, w in zip(self.replicas, self.config.weights, strict=False)
            ],
            "startup_s": round(self.startup_s, 2),
        }
