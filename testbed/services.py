"""Real host processes (Nginx, Prometheus, Alertmanager, HAProxy) with generated configs.

The watcher's remediation acts on real load balancers and its predictions read real
Prometheus data, so tests and benchmarks run the actual Debian binaries rather than
mocks. Every instance gets its own work dir (config, logs, state, PID file), binds only
127.0.0.1 and is stopped by the PID this module spawned -- never by process name -- so
concurrent test runs and the system services on the same host are left alone.

This module only writes the initial configs and runs the processes. Every runtime change goes
through the product's own actuators -- Nginx weights through :class:`watcher.actions.nginx.NginxShifter`
(rewrite, ``nginx -t``, HUP, confirm), HAProxy through :class:`watcher.actions.haproxy.HAProxyRuntime`
-- so a test that changes the testbed's load balancer exercises the code the watcher runs.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import requests

from testbed.ports import LOOPBACK, port_is_open
from watcher import procfs
from watcher.actions.base import ActionError, Replica
from watcher.actions.haproxy import HAProxyRuntime
from watcher.actions.nginx import HostNginxReload, NginxConfigRefused, NginxShifter
from watcher.fileutil import atomic_write
from watcher.model import Target

__all__ = [
    "Alertmanager",
    "BinaryNotFoundError",
    "HAProxy",
    "HostService",
    "Nginx",
    "NginxConfigError",
    "Prometheus",
    "ScrapeTarget",
    "ServiceError",
    "ServiceStartError",
    "Upstream",
    "running",
]


class ServiceError(RuntimeError):
    """Base error for test-bed services."""


class BinaryNotFoundError(ServiceError):
    """The service binary is absent; the message names the Debian package to install."""


class ServiceStartError(ServiceError):
    """The process died or never became ready; the message carries the log tail."""


class NginxConfigError(ServiceError):
    """``nginx -t`` rejected a generated config (the previous config stays live)."""


@dataclass(frozen=True)
class Upstream:
    """One backend server behind a load balancer.

    ``address`` is ``"127.0.0.1:port"``; ``name`` is the stable handle used to change the
    weight later (HAProxy server name; for Nginx it is kept as a comment next to the line).
    """

    name: str
    address: str
    weight: int = 1

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"upstream name {self.name!r} must match [A-Za-z0-9_.-]+")
        if self.weight < 0:
            raise ValueError(f"upstream {self.name}: weight must be >= 0, got {self.weight}")


@dataclass(frozen=True)
class ScrapeTarget:
    """One Prometheus static scrape target (a job with a single address)."""

    job: str
    address: str
    metrics_path: str = "/metrics"
    labels: dict[str, str] = field(default_factory=dict)


def _session() -> requests.Session:
    """A requests session that ignores proxy env vars: all traffic must stay on loopback."""
    s = requests.Session()
    s.trust_env = False
    return s


def _tail(path: Path, max_lines: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "<no log>"
    return "\n".join(lines[-max_lines:]) if lines else "<empty log>"


def _duration(seconds: float) -> str:
    """Prometheus/Alertmanager duration string; milliseconds keep sub-second intervals exact."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


_live_services: weakref.WeakSet[HostService] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Last-resort cleanup so an aborted test run does not leave its own servers running."""
    for svc in list(_live_services):
        with contextlib.suppress(Exception):
            svc.stop(timeout_s=3.0)


class HostService:
    """A host process with a generated config, owned and stopped by PID.

    Subclasses provide ``binary``/``debian_package``, write their config in
    :meth:`write_config`, build the argv in :meth:`command` and probe :meth:`is_ready`.
    """

    binary: str = ""
    debian_package: str = ""
    name: str = "service"

    def __init__(self, workdir: str | Path | None = None, start_timeout_s: float = 20.0) -> None:
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: Any = None
        self._lock = threading.RLock()

    # -- subclass hooks -------------------------------------------------------------------
    def write_config(self) -> None:
        """Write every config file the process needs into :attr:`workdir`."""
        raise NotImplementedError

    def command(self) -> list[str]:
        """The argv to spawn (first element is the resolved binary)."""
        raise NotImplementedError

    def is_ready(self) -> bool:
        """A cheap probe that returns True once the service is serving."""
        raise NotImplementedError

    def extra_log_paths(self) -> list[Path]:
        """Additional logs worth quoting in start errors (e.g. nginx's error_log)."""
        return []

    # -- paths / state --------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        """stdout+stderr of the process."""
        return self.workdir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def binary_path(self) -> str:
        """Resolve the binary, or explain which Debian package provides it."""
        found = shutil.which(self.binary) or (self.binary if os.access(self.binary, os.X_OK) else None)
        if found is None:
            raise BinaryNotFoundError(
                f"{self.name}: binary {self.binary!r} not found; install the Debian package "
                f"'{self.debian_package}' (apt-get install {self.debian_package})"
            )
        return found

    def log_tail(self, max_lines: int = 40) -> str:
        parts = [f"--- {self.log_path} ---\n{_tail(self.log_path, max_lines)}"]
        parts += [f"--- {p} ---\n{_tail(p, max_lines)}" for p in self.extra_log_paths() if p.exists()]
        return "\n".join(parts)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> Self:
        """Write config, spawn, record the PID and block until ready (or raise with log tail)."""
        with self._lock:
            if self.running:
                return self
            self.binary_path()
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.write_config()
            argv = self.command()
            self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
            self._proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal Ctrl-C must not bypass our orderly stop
            )
            self.pid_path.write_text(f"{self._proc.pid}\n")
            _live_services.add(self)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self.stop()
                raise ServiceStartError(
                    f"{self.name} exited with code {rc} during startup: {' '.join(argv)}\n{self.log_tail()}"
                )
            try:
                if self.is_ready():
                    return self
            except (OSError, requests.RequestException):
                pass
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise ServiceStartError(
                    f"{self.name} not ready after {self.start_timeout_s:.1f}s "
                    f"(pid {self._proc.pid}): {' '.join(argv)}\n{tail}"
                )
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM our PID, wait, SIGKILL if it lingers; idempotent."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    # Children first (e.g. nginx workers): once the master is gone they would
                    # be re-parented and no longer identifiable as ours.
                    for pid in [*procfs.children(proc.pid), proc.pid]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    proc.wait(timeout=5.0)
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()
            _live_services.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _http_ok(self, url: str) -> bool:
        with _session() as s:
            return s.get(url, timeout=1.0).status_code == 200


# ======================================================================================
# Nginx
# ======================================================================================

NGINX_ACCESS_LOG_FORMAT = (
    "{"
    '"time":"$time_iso8601",'
    '"msec":"$msec",'
    '"remote_addr":"$remote_addr",'
    '"method":"$request_method",'
    '"uri":"$request_uri",'
    '"status":"$status",'
    '"upstream_addr":"$upstream_addr",'
    '"upstream_status":"$upstream_status",'
    '"request_time":"$request_time",'
    '"upstream_response_time":"$upstream_response_time",'
    '"upstream_connect_time":"$upstream_connect_time",'
    '"bytes_sent":"$bytes_sent"'
    "}"
)
"""JSON access log (``escape=json``): one object per line, so it is parseable without regexes.
With retries ``upstream_addr``/``upstream_status`` hold comma-separated lists (last = final)."""


class Nginx(HostService):
    """nginx reverse proxy with a weighted upstream block that can be changed at runtime.

    Runs its own master in the foreground (``daemon off``), so the PID we spawn is the
    master: SIGHUP reloads it, SIGTERM stops it and its workers. The upstream servers live
    in ``upstreams.conf`` together with a ``$config_generation`` marker that the
    ``/__config_generation`` location serves. Weight changes are the watcher's own drain
    (:meth:`shifter`); a whole new server list is installed by the same shifter and, beyond
    its worker-based confirmation, checked end to end: fresh connections see the new generation.
    """

    binary = "/usr/sbin/nginx"
    debian_package = "nginx-light"
    name = "nginx"
    upstream_name = "backends"
    status_path = "/nginx_status"
    generation_path = "/__config_generation"

    def __init__(
        self,
        workdir: str | Path | None,
        listen_port: int,
        upstreams: Sequence[Upstream],
        proxy_timeout_s: float = 3.0,
        max_fails: int = 1,
        fail_timeout_s: float = 10,
        proxy_next_upstream: str = "error timeout",
        proxy_next_upstream_tries: int = 0,
        keepalive: int = 0,
        worker_processes: int = 1,
        start_timeout_s: float = 15.0,
    ) -> None:
        super().__init__(workdir, start_timeout_s)
        if not upstreams:
            raise ValueError("nginx needs at least one upstream")
        names = [u.name for u in upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate upstream names: {names}")
        self.listen_port = listen_port
        self.upstreams: list[Upstream] = list(upstreams)
        self.proxy_timeout_s = proxy_timeout_s
        self.max_fails = max_fails
        self.fail_timeout_s = fail_timeout_s
        self.proxy_next_upstream = proxy_next_upstream
        self.proxy_next_upstream_tries = proxy_next_upstream_tries
        self.keepalive = keepalive
        self.worker_processes = worker_processes
        self.generation = 1

    # -- paths ----------------------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.workdir / "nginx.conf"

    @property
    def upstreams_conf_path(self) -> Path:
        return self.workdir / "upstreams.conf"

    @property
    def error_log_path(self) -> Path:
        return self.workdir / "error.log"

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "access.log"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.listen_port}"

    def extra_log_paths(self) -> list[Path]:
        return [self.error_log_path]

    # -- config ---------------------------------------------------------------------------
    def _timeout(self) -> str:
        return f"{max(1, round(self.proxy_timeout_s * 1000))}ms"

    def render_upstreams(self, upstreams: Sequence[Upstream], generation: int) -> str:
        """The included upstream block; weight 0 becomes ``down`` (nginx rejects weight=0)."""
        lines = [
            "# generated by testbed.services.Nginx -- rewritten atomically on weight changes",
            f'map "" $config_generation {{ default "{generation}"; }}',
            f"upstream {self.upstream_name} {{",
        ]
        fail = f"max_fails={self.max_fails} fail_timeout={_duration(self.fail_timeout_s)}"
        for u in upstreams:
            if u.weight == 0:
                lines.append(f"    server {u.address} {fail} down;  # {u.name} weight=0")
            else:
                lines.append(f"    server {u.address} weight={u.weight} {fail};  # {u.name}")
        if self.keepalive > 0:
            lines.append(f"    keepalive {self.keepalive};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def render_main(self) -> str:
        d = self.workdir
        t = self._timeout()
        user = "user root;\n" if os.geteuid() == 0 else ""
        keepalive_headers = (
            '        proxy_http_version 1.1;\n        proxy_set_header Connection "";\n' if self.keepalive > 0 else ""
        )
        return f"""# generated by testbed.services.Nginx
{user}daemon off;
master_process on;
worker_processes {self.worker_processes};
pid {d}/nginx.master.pid;
error_log {d}/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;

    log_format watcher escape=json '{NGINX_ACCESS_LOG_FORMAT}';
    access_log {d}/access.log watcher;

    include {d}/upstreams.conf;

    server {{
        listen {LOOPBACK}:{self.listen_port};
        server_name _;

        location = {self.status_path} {{
            stub_status;
            allow 127.0.0.1;
            deny all;
            access_log off;
        }}

        location = {self.generation_path} {{
            allow 127.0.0.1;
            deny all;
            access_log off;
            default_type text/plain;
            return 200 "$config_generation\\n";
        }}

        location / {{
            proxy_pass http://{self.upstream_name};
            proxy_connect_timeout {t};
            proxy_send_timeout {t};
            proxy_read_timeout {t};
            proxy_next_upstream {self.proxy_next_upstream};
            proxy_next_upstream_tries {self.proxy_next_upstream_tries};
{keepalive_headers}            proxy_set_header Host $host;
            add_header X-Upstream $upstream_addr always;
            add_header X-Upstream-Status $upstream_status always;
        }}
    }}
}}
"""

    def write_config(self) -> None:
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        atomic_write(self.upstreams_conf_path, self.render_upstreams(self.upstreams, self.generation))
        atomic_write(self.conf_path, self.render_main())
        self.check_config()

    def check_config(self) -> None:
        """Run ``nginx -t`` on the files on disk; raise :class:`NginxConfigError` with its output."""
        try:
            self.reloader().test()
        except NginxConfigRefused as exc:
            raise NginxConfigError(str(exc)) from None
        except ActionError as exc:
            raise ServiceError(str(exc)) from None

    def reloader(self) -> HostNginxReload:
        """The product's reloader for this master: ``nginx -t`` on these files, HUP, workers from /proc."""
        return HostNginxReload(
            pid_file=self.pid_path,
            nginx=self.binary_path(),
            args=("-q", "-p", f"{self.workdir}/", "-c", str(self.conf_path)),
            error_log=self.error_log_path,
        )

    def shifter(self, reload_timeout_s: float = 10.0) -> NginxShifter:
        """The product's traffic shifter on this instance's upstream file (what the watcher would use)."""
        return NginxShifter(
            self.upstreams_conf_path,
            self.reloader(),
            upstream=self.upstream_name,
            access_log=self.access_log_path,
            reload_timeout_s=reload_timeout_s,
        )

    def command(self) -> list[str]:
        return [self.binary_path(), "-p", f"{self.workdir}/", "-c", str(self.conf_path)]

    def served_generation(self) -> int | None:
        """The config generation fresh connections currently see (None if unreachable)."""
        try:
            with _session() as s:
                r = s.get(self.url + self.generation_path, timeout=1.0, headers={"Connection": "close"})
            return int(r.text.strip()) if r.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def is_ready(self) -> bool:
        return self.served_generation() == self.generation

    # -- runtime changes ------------------------------------------------------------------
    def stub_status(self) -> dict[str, int]:
        """Parse stub_status (active connections, accepts, handled, requests, reading...)."""
        with _session() as s:
            text = s.get(self.url + self.status_path, timeout=2.0).text
        nums = [int(x) for x in re.findall(r"\d+", text)]
        keys = ["active", "accepts", "handled", "requests", "reading", "writing", "waiting"]
        return dict(zip(keys, nums, strict=False))

    def read_access_log(self) -> list[dict[str, str]]:
        """All access-log entries so far, as dicts (see :data:`NGINX_ACCESS_LOG_FORMAT`)."""
        out: list[dict[str, str]] = []
        if not self.access_log_path.exists():
            return out
        for line in self.access_log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def set_weights(self, weights: Mapping[str, int], reload_timeout_s: float = 10.0) -> None:
        """Change per-upstream weights (0 = ``down``) with the watcher's own shifter, one confirmed
        reload per named upstream; unknown names raise KeyError, negative weights ValueError."""
        known = {u.name for u in self.upstreams}
        unknown = set(weights) - known
        if unknown:
            raise KeyError(f"unknown upstream(s) {sorted(unknown)}; known: {sorted(known)}")
        new = [Upstream(u.name, u.address, weights.get(u.name, u.weight)) for u in self.upstreams]
        with self._lock, self._actuating():
            shifter = self.shifter(reload_timeout_s)
            for u in new:
                if u.name in weights:
                    shifter.set_weight(Replica(Target(u.name), u.address, f"http://{u.address}", ""), u.weight)
            self.upstreams = new

    def set_upstreams(self, upstreams: Sequence[Upstream], reload_timeout_s: float = 10.0) -> None:
        """Replace the whole server list (validated by ``nginx -t``) and hot-reload."""
        if not upstreams:
            raise ValueError("nginx needs at least one upstream")
        generation = self.generation + 1
        self.apply_upstream_config(self.render_upstreams(upstreams, generation), generation, reload_timeout_s)
        self.upstreams = list(upstreams)

    def apply_upstream_config(self, text: str, generation: int, reload_timeout_s: float = 10.0) -> None:
        """Install raw upstream-file text with the product's shifter, then confirm ``generation`` is served.

        On a validation failure the previous file is restored and nothing is signalled, so
        the running config is untouched. ``text`` must define ``$config_generation`` as
        ``generation`` (see :meth:`render_upstreams`) for the reload to be confirmable.
        """
        with self._lock, self._actuating():
            self.shifter(reload_timeout_s).install(text)
            deadline = time.monotonic() + reload_timeout_s
            while self.served_generation() != generation:
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"nginx did not serve config generation {generation} within "
                        f"{reload_timeout_s}s after a confirmed reload\n{self.log_tail()}"
                    )
                time.sleep(0.02)
            self.generation = generation

    @contextlib.contextmanager
    def _actuating(self) -> Iterator[None]:
        """Run a shifter call on this instance, its errors in the testbed's terms (with the log tail)."""
        if not self.running or self.pid is None:
            raise ServiceError("nginx is not running")
        try:
            yield
        except NginxConfigRefused as exc:
            raise NginxConfigError(str(exc)) from None
        except ActionError as exc:
            raise ServiceError(f"{exc}\n{self.log_tail()}") from None

    def worker_pids(self, accepting_only: bool = False) -> list[int]:
        """PIDs of the master's worker children (optionally excluding ones shutting down)."""
        if not self.running:
            return []
        try:
            workers = self.reloader().workers()
        except ActionError:
            return []  # the master exited between the check and the read
        return [pid for pid, accepting in workers.items() if accepting or not accepting_only]


# ======================================================================================
# Prometheus
# ======================================================================================


class Prometheus(HostService):
    """A private Prometheus scraping the given targets, optionally alerting to Alertmanager."""

    binary = "/usr/bin/prometheus"
    debian_package = "prometheus"
    name = "prometheus"

    def __init__(
        self,
        workdir: str | Path | None,
        port: int,
        targets: Sequence[ScrapeTarget] = (),
        scrape_interval_s: float = 1.0,
        evaluation_interval_s: float | None = None,
        rule_files: Sequence[str | Path] = (),
        rules_yaml: str | None = None,
        alertmanager_url: str | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(workdir, start_timeout_s)
        self.port = port
        self.targets = list(targets)
        self.scrape_interval_s = scrape_interval_s
        self.evaluation_interval_s = evaluation_interval_s or scrape_interval_s
        self.rule_files = [str(p) for p in rule_files]
        self.rules_yaml = rules_yaml
        self.alertmanager_url = alertmanager_url

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    def render_config(self) -> dict[str, Any]:
        interval = _duration(self.scrape_interval_s)
        rule_files = list(self.rule_files)
        if self.rules_yaml is not None:
            rule_files.append(str(self.workdir / "rules.yml"))
        cfg: dict[str, Any] = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": _duration(self.evaluation_interval_s),
            },
            "rule_files": rule_files,
            "scrape_configs": [],
        }
        # Prometheus refuses two scrape configs with one job name: group targets by (job, path).
        jobs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for t in self.targets:
            jobs.setdefault((t.job, t.metrics_path), []).append({"targets": [t.address], "labels": dict(t.labels)})
        names = Counter(job for job, _ in jobs)
        for (job, path), static in jobs.items():
            name = job if names[job] == 1 else f"{job}{path.replace('/', '_')}"
            cfg["scrape_configs"].append({"job_name": name, "metrics_path": path, "static_configs": static})
        if self.alertmanager_url:
            hostport = self.alertmanager_url.split("://", 1)[-1].rstrip("/")
            cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [hostport]}]}]}
        return cfg

    def write_config(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        if self.rules_yaml is not None:
            atomic_write(self.workdir / "rules.yml", self.rules_yaml)
        # JSON is valid YAML, and avoids a YAML-emitter dependency in this module.
        atomic_write(self.config_path, json.dumps(self.render_config(), indent=2) + "\n")

    def command(self) -> list[str]:
        return [
            self.binary_path(),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
            # Default 1m: alerts evaluated before the notifier discovered Alertmanager
            # (~5 s after start) would otherwise not reach it for a minute.
            f"--rules.alert.resend-delay={_duration(self.evaluation_interval_s)}",
            "--log.level=info",
        ]

    def is_ready(self) -> bool:
        return self._http_ok(self.url + "/-/ready")

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query via HTTP API v1; returns ``data.result`` (raises on API errors)."""
        params: dict[str, str] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        with _session() as s:
            r = s.get(self.url + "/api/v1/query", params=params, timeout=5.0)
        body = r.json()
        if body.get("status") != "success":
            raise ServiceError(f"prometheus query {promql!r} failed: {body.get('error', r.text)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for_series(self, promql: str, min_count: int = 1, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """Poll :meth:`query` until it returns at least ``min_count`` series."""
        deadline = time.monotonic() + timeout_s
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = self.query(promql)
            if len(last) >= min_count:
                return last
            time.sleep(min(0.25, self.scrape_interval_s / 2))
        raise TimeoutError(f"{promql!r}: {len(last)} series after {timeout_s}s, wanted >= {min_count}")

    def wait_for_alertmanager(self, timeout_s: float = 15.0) -> None:
        """Block until the notifier lists the configured Alertmanager as active.

        Prometheus applies notifier discovery in 5 s batches, so for the first seconds
        after start firing alerts have nowhere to go.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with _session() as s:
                data = s.get(self.url + "/api/v1/alertmanagers", timeout=5.0).json()["data"]
            if data.get("activeAlertmanagers"):
                return
            time.sleep(0.2)
        raise TimeoutError(f"prometheus has no active alertmanager after {timeout_s}s")

    def targets_health(self) -> list[dict[str, Any]]:
        """Active targets from ``/api/v1/targets`` (health, lastError) for debugging scrapes."""
        with _session() as s:
            body = s.get(self.url + "/api/v1/targets", timeout=5.0).json()
        active: list[dict[str, Any]] = body["data"]["activeTargets"]
        return active

    def reload(self) -> None:
        """Rewrite the config and ask Prometheus to reload it (``/-/reload``)."""
        self.write_config()
        with _session() as s:
            r = s.post(self.url + "/-/reload", timeout=10.0)
        if r.status_code != 200:
            raise ServiceError(f"prometheus reload failed: {r.status_code} {r.text}")


# ======================================================================================
# Alertmanager
# ======================================================================================


class Alertmanager(HostService):
    """A private, non-clustered Alertmanager, optionally notifying a webhook receiver."""

    binary = "/usr/bin/prometheus-alertmanager"
    debian_package = "prometheus-alertmanager"
    name = "alertmanager"

    def __init__(
        self,
        workdir: str | Path | None,
        port: int,
        webhook_url: str | None = None,
        group_wait_s: float = 0.5,
        group_interval_s: float = 1.0,
        repeat_interval_s: float = 3600.0,
        start_timeout_s: float = 20.0,
    ) -> None:
        super().__init__(workdir, start_timeout_s)
        self.port = port
        self.webhook_url = webhook_url
        self.group_wait_s = group_wait_s
        self.group_interval_s = group_interval_s
        self.repeat_interval_s = repeat_interval_s

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "alertmanager.yml"

    def render_config(self) -> dict[str, Any]:
        receiver: dict[str, Any] = {"name": "default"}
        if self.webhook_url:
            receiver["webhook_configs"] = [{"url": self.webhook_url, "send_resolved": True, "max_alerts": 0}]
        return {
            "route": {
                "receiver": "default",
                "group_by": ["alertname"],
                "group_wait": _duration(self.group_wait_s),
                "group_interval": _duration(self.group_interval_s),
                "repeat_interval": _duration(self.repeat_interval_s),
            },
            "receivers": [receiver],
        }

    def write_config(self) -> None:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        atomic_write(self.config_path, json.dumps(self.render_config(), indent=2) + "\n")

    def command(self) -> list[str]:
        return [
            self.binary_path(),
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--cluster.listen-address=",  # clustering off: no gossip port, no peers
            "--log.level=info",
        ]

    def is_ready(self) -> bool:
        return self._http_ok(self.url + "/-/ready")

    def alerts(self, active_only: bool = True) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``."""
        params = {"active": "true", "silenced": "false", "inhibited": "false"} if active_only else {}
        with _session() as s:
            r = s.get(self.url + "/api/v2/alerts", params=params, timeout=5.0)
        r.raise_for_status()
        out: list[dict[str, Any]] = r.json()
        return out

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """``POST /api/v2/alerts`` (what Prometheus -- or the watcher -- sends)."""
        with _session() as s:
            r = s.post(self.url + "/api/v2/alerts", json=list(alerts), timeout=5.0)
        if r.status_code != 200:
            raise ServiceError(f"alertmanager rejected alerts: {r.status_code} {r.text}")


# ======================================================================================
# HAProxy
# ======================================================================================

ServerState = Literal["ready", "drain", "maint"]


class HAProxy(HostService):
    """HAProxy in foreground (``-db``) with an admin-level runtime API on a unix socket.

    The admin socket lets tests (and the watcher) drain/weight servers without reloads,
    which is the alternative remediation path to rewriting Nginx upstreams.
    """

    binary = "/usr/sbin/haproxy"
    debian_package = "haproxy"
    name = "haproxy"

    def __init__(
        self,
        workdir: str | Path | None,
        listen_port: int,
        backend: str,
        servers: Sequence[Upstream],
        timeout_s: float = 3.0,
        health_checks: bool = False,
        check_interval_s: float = 1.0,
        start_timeout_s: float = 15.0,
    ) -> None:
        super().__init__(workdir, start_timeout_s)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", backend):
            raise ValueError(f"backend name {backend!r} must match [A-Za-z0-9_.-]+")
        self.listen_port = listen_port
        self.backend = backend
        self.servers = list(servers)
        self.timeout_s = timeout_s
        self.health_checks = health_checks
        self.check_interval_s = check_interval_s

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.listen_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "haproxy.cfg"

    @property
    def socket_path(self) -> Path:
        return self.workdir / "admin.sock"

    def render_config(self) -> str:
        t = f"{max(1, round(self.timeout_s * 1000))}ms"
        check = f" check inter {_duration(self.check_interval_s)}" if self.health_checks else ""
        servers = "\n".join(f"    server {s.name} {s.address} weight {s.weight}{check}" for s in self.servers)
        return f"""# generated by testbed.services.HAProxy
global
    stats socket {self.socket_path} mode 600 level admin
    stats timeout 10s
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect {t}
    timeout client 30s
    timeout server {t}
    retries 1
    option redispatch

frontend fe_{self.backend}
    bind {LOOPBACK}:{self.listen_port}
    default_backend {self.backend}

backend {self.backend}
    balance roundrobin
    http-response set-header X-Upstream %si:%sp
    http-response set-header X-Upstream-Name %s
{servers}
"""

    def write_config(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a previous run would fool is_ready
        atomic_write(self.config_path, self.render_config())
        proc = subprocess.run(
            [self.binary_path(), "-c", "-q", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        if proc.returncode != 0:
            raise ServiceError(f"haproxy -c failed:\n{(proc.stderr + proc.stdout).strip()}")

    def command(self) -> list[str]:
        return [self.binary_path(), "-db", "-f", str(self.config_path)]

    def is_ready(self) -> bool:
        if not (self.socket_path.exists() and port_is_open(self.listen_port)):
            return False
        try:
            return "Pid:" in self.runtime("show info")
        except ServiceError:
            return False  # the socket exists but does not answer yet

    def client(self, timeout_s: float = 5.0) -> HAProxyRuntime:
        """The product's runtime-API client on this instance's admin socket."""
        return HAProxyRuntime(self.socket_path, timeout_s)

    def runtime(self, cmd: str, timeout_s: float = 5.0) -> str:
        """Send one runtime-API command over the admin socket and return the full reply."""
        try:
            return self.client(timeout_s).command(cmd)
        except ActionError as exc:
            raise ServiceError(str(exc)) from None

    def _checked(self, cmd: str) -> None:
        try:
            self.client().checked(cmd)
        except ActionError as exc:
            raise ServiceError(str(exc)) from None

    def set_weight(self, name: str, weight: int) -> None:
        """Runtime weight change (0 stops new traffic, like drain but without the state)."""
        if weight < 0:
            raise ValueError("weight must be >= 0")
        self._checked(f"set server {self.backend}/{name} weight {weight}")

    def set_state(self, name: str, state: ServerState) -> None:
        """``ready`` | ``drain`` (no new traffic) | ``maint`` (out of rotation)."""
        if state not in ("ready", "drain", "maint"):
            raise ValueError(f"state must be ready/drain/maint, got {state!r}")
        self._checked(f"set server {self.backend}/{name} state {state}")

    def show_servers(self) -> dict[str, dict[str, Any]]:
        """``show servers state <backend>`` as {server name: fields}, as the shifter reads it.

        Derived keys ``weight`` (current user weight), ``state`` (ready/drain/maint) and
        ``initial_weight`` come from the product's client; ``up`` (operational state ==
        running) is added here, so callers need not know the bit layout.
        """
        try:
            servers = self.client().servers_state(self.backend)
        except ActionError as exc:
            raise ServiceError(str(exc)) from None
        for row in servers.values():
            row["up"] = row.get("srv_op_state") == "2"
        return servers


@contextlib.contextmanager
def running(*services: HostService) -> Iterator[tuple[HostService, ...]]:
    """Start several services in order and always stop them in reverse order."""
    started: list[HostService] = []
    try:
        for svc in services:
            started.append(svc.start())
        yield services
    finally:
        for svc in reversed(started):
            svc.stop()
