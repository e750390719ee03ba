"""``watcher doctor``: is this configuration going to work, and if not, what exactly is wrong?

A newcomer's first run of the watcher usually "works" and does nothing: the containers lack a label
the actuators need, the series queries name a label Prometheus does not have, the Nginx PID file is
stale. ``watcher run`` cannot say so loudly (it must keep running through outages), so this command
does: it loads the configuration and the rule packs exactly as ``watcher run`` does, prints the
effective settings (secrets redacted by :mod:`watcher.redact`), and asks every dependency the
settings name one read-only question. Each finding is one line, ``ok:``, ``warning:`` or
``problem:``; the exit status is 0 only when there is no problem.

Read-only by design: nothing here writes a file, sends an alert or changes a weight (no ``nginx -t``,
which opens its log files for writing; no webhook probe, which would deliver a message).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import requests

from watcher.actions.protocols import DEFAULT_PROTOCOL, UnknownProtocolError, protocol_name
from watcher.config import Settings, effective_config
from watcher.inventory import LabelNames, WatchedContainer, make_clients
from watcher.redact import redact_text, redact_url

Kind = Literal["ok", "warning", "problem"]
ADVICE_LABELS = "containers need both labels to be drained, restarted and verified"


@dataclass(frozen=True)
class Line:
    kind: Kind
    text: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}"


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The settings as ``watcher run`` uses them, every secret masked (tokens, URL passwords, queries)."""
    return effective_config(settings, mask_site=False)


class Doctor:
    """One pass over the settings' dependencies. ``clients`` replaces the Docker engines (tests)."""

    def __init__(self, settings: Settings, clients: Mapping[str, Any] | None = None, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._clients = clients
        self.names = LabelNames(
            selector=tuple(settings.label_selector),
            service=settings.service_label,
            upstream=settings.upstream_label,
            model=settings.model_label,
            protocol=settings.protocol_label,
        )
        self.http = requests.Session()
        self.http.trust_env = False  # as the watcher: never through a proxy from the environment
        self.containers: list[WatchedContainer] = []
        self.clients: dict[str, Any] = {}

    def _say(self, text: str) -> str:
        return redact_text(text, self.settings.secrets)

    def ok(self, text: str) -> Line:
        return Line("ok", self._say(text))

    def warning(self, text: str) -> Line:
        return Line("warning", self._say(text))

    def problem(self, text: str) -> Line:
        return Line("problem", self._say(text))

    def run(self) -> Iterator[Line]:
        """Every check, in the order a newcomer would fix them."""
        checks: list[Callable[[], Iterator[Line]]] = [
            self.packs_and_prometheus,
            self.docker,
            self.load_balancer,
            self.model_repo,
            self.alertmanager,
            self.store,
        ]
        for check in checks:
            try:
                yield from check()
            except Exception as exc:  # a check that breaks is a problem line, never a traceback
                yield self.problem(f"{check.__name__}: the check itself failed: {type(exc).__name__}: {exc}")

    # -- rule packs and Prometheus ---------------------------------------------------------------
    def packs_and_prometheus(self) -> Iterator[Line]:
        from watcher.rulepack.compile import compile_packs
        from watcher.rulepack.loader import RulePackError
        from watcher.service import compile_options

        try:
            ruleset = compile_packs(self.settings.packs, compile_options(self.settings))
        except RulePackError as exc:
            for error in exc.errors:
                yield self.problem(f"rule pack: {error}")
            return
        paths = ", ".join(str(p) for p in self.settings.packs)
        yield self.ok(
            f"rule packs ({paths}): {len(ruleset.packs)} pack(s), {ruleset.rule_count} rules, "
            f"{len(ruleset.queries)} series queries"
        )
        url = self.settings.prometheus_url
        if not url:
            if ruleset.queries:
                source = "Docker stats" if self.settings.stats_interval_s > 0 else "nothing (stats_interval_s is 0)"
                yield self.warning(
                    f"prometheus_url is not set: the packs' {len(ruleset.queries)} series queries do not run; "
                    f"samples come from {source}"
                )
            return
        from watcher.sources.base import SignalQueue
        from watcher.sources.prometheus import PrometheusSource

        shown = redact_url(url)
        prom = PrometheusSource(SignalQueue(), url, [], timeout_s=self.timeout_s)  # the watcher's own client
        try:
            self.http.get(f"{url.rstrip('/')}/-/ready", timeout=self.timeout_s).raise_for_status()
        except requests.RequestException as exc:
            yield self.problem(f"prometheus ({shown}): not ready: {_why(exc)}")
            return
        yield self.ok(f"prometheus ({shown}): ready")
        for query in ruleset.queries:
            try:
                result = prom.client.custom_query(query.expr, timeout=self.timeout_s)
            except Exception as exc:
                yield self.problem(f"series {query.id}: the query failed: {_why(exc)} (query: {query.expr})")
                continue
            labelled = [r for r in result if query.target_label in (r.get("metric") or {})]
            if not result:
                yield self.warning(
                    f"series {query.id}: returned 0 series (nothing to evaluate until it does; query: {query.expr})"
                )
            elif not labelled:
                yield self.problem(
                    f"series {query.id}: returned {len(result)} series, none with label {query.target_label!r} "
                    "that names the replica (set prometheus_target_label or the series' target_label)"
                )
            else:
                yield self.ok(f"series {query.id}: returned {len(result)} series")

    # -- Docker engines and the selected containers ---------------------------------------------------
    def docker(self) -> Iterator[Line]:
        specs: Mapping[str, Any] = self._clients if self._clients is not None else self.settings.engines
        for engine, spec in specs.items():
            where = self.settings.engines.get(engine) or "DOCKER_HOST or the local socket"
            try:
                # one engine at a time: docker-py asks the engine its API version when the client is made
                client = make_clients({engine: spec})[engine]
                self.clients[engine] = client
                version = client.version().get("Version", "?")
                listed = client.containers.list(all=True, filters={"label": list(self.names.selector)})
            except Exception as exc:
                yield self.problem(f"docker {engine} ({where}): the engine does not answer: {_why(exc)}")
                continue
            yield self.ok(
                f"docker {engine} ({where}): engine {version}, "
                f"{len(listed)} container(s) match {list(self.names.selector)}"
            )
            if not listed:
                yield self.problem(
                    f"docker {engine}: no container carries the labels {list(self.names.selector)} (label_selector)"
                )
            for c in listed:
                watched = WatchedContainer.of(engine, c, self.names)
                self.containers.append(watched)
                yield self._container_line(watched)

    def _container_line(self, c: WatchedContainer) -> Line:
        missing = [
            label for label, value in ((self.names.upstream, c.upstream), (self.names.model, c.model)) if value is None
        ]
        state = "running" if c.running else "not running"
        if c.health:
            state += f", {c.health}"
        if missing:
            labels = " and ".join(missing)
            return self.problem(
                f"container {c.key} ({state}): watched but cannot be remediated: "
                f"missing label {labels} ({ADVICE_LABELS})"
            )
        try:
            protocol = protocol_name(c.key, c.protocol, self.names.protocol)
        except UnknownProtocolError as exc:  # it would be drained and then held, never verified
            return self.problem(f"{exc} (it would be drained and held: the watcher cannot verify it)")
        service = c.target.service or f"none (no {self.names.service} label: capacity rails see it alone)"
        return self.ok(
            f"container {c.key} ({state}): can be remediated: upstream {c.upstream}, model {c.model}, service {service}"
            + ("" if protocol == DEFAULT_PROTOCOL else f", protocol {protocol}")
        )

    # -- the load balancer -------------------------------------------------------------------------------
    def load_balancer(self) -> Iterator[Line]:
        s = self.settings
        if s.lb == "none":
            yield self.warning("lb is none: no traffic is shifted (drain and restore are skipped)")
            return
        if s.lb == "nginx":
            yield from self._nginx()
        else:
            yield from self._haproxy()

    def _nginx(self) -> Iterator[Line]:
        from watcher.actions.base import ActionError
        from watcher.actions.nginx import HostNginxReload, NginxShifter
        from watcher.fleet import replica_of
        from watcher.procfs import alive, cmdline

        s = self.settings
        path = s.nginx_upstreams_file
        if path is None:
            yield self.problem("lb is nginx but nginx_upstreams_file is not set (WATCHER_NGINX_UPSTREAMS_FILE)")
            return
        if not path.is_file():
            yield self.problem(f"nginx upstreams file {path}: no such file")
            return
        if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK):
            yield self.problem(f"nginx upstreams file {path}: not writable by this user (it and its directory must be)")
        else:
            yield self.ok(f"nginx upstreams file {path}: writable")
        if s.nginx_container:
            yield from self._nginx_container(s.nginx_container)
        elif s.nginx_pid_file is None:
            yield self.problem("lb is nginx: set nginx_pid_file (a host master) or nginx_container (WATCHER_NGINX_*)")
        else:
            reload = HostNginxReload(pid_file=s.nginx_pid_file, nginx=s.nginx_binary)
            try:
                pid = reload.master_pid()
            except ActionError as exc:
                yield self.problem(str(exc))
            else:
                title = cmdline(pid) or ""
                if not alive(pid):
                    yield self.problem(f"nginx pid file {s.nginx_pid_file}: PID {pid} is not running (stale file)")
                elif "nginx" not in title:
                    yield self.problem(f"nginx pid file {s.nginx_pid_file}: PID {pid} is not nginx ({title.strip()!r})")
                else:
                    yield self.ok(f"nginx pid file {s.nginx_pid_file}: master PID {pid} is running")
            if shutil.which(s.nginx_binary) is None:
                yield self.problem(
                    f"nginx_binary {s.nginx_binary!r}: not found (needed for 'nginx -t' before a reload)"
                )
        shifter = NginxShifter(path, HostNginxReload(pid=os.getpid()))  # reads the file only: no reload here
        yield from self._upstreams_known(lambda r: shifter.get_weight(r), f"nginx upstreams file {path}", replica_of)

    def _nginx_container(self, name: str) -> Iterator[Line]:
        clients = getattr(self, "clients", {})
        if not clients:
            yield self.problem(f"nginx_container {name}: no Docker engine to find it on")
            return
        client = next(iter(clients.values()))
        try:
            container = client.containers.get(name)
        except Exception as exc:
            yield self.problem(f"nginx_container {name}: {_why(exc)}")
            return
        if container.status != "running":
            yield self.problem(f"nginx_container {name}: {container.status}, not running")
        else:
            yield self.ok(f"nginx_container {name}: running")

    def _haproxy(self) -> Iterator[Line]:
        from watcher.actions.base import ActionError
        from watcher.actions.haproxy import HAProxyRuntime, HAProxyShifter
        from watcher.fleet import replica_of

        s = self.settings
        if s.haproxy_socket is None:
            yield self.problem("lb is haproxy but haproxy_socket is not set (WATCHER_HAPROXY_SOCKET)")
            return
        try:
            info = HAProxyRuntime(s.haproxy_socket, timeout_s=self.timeout_s).command("show info")
        except ActionError as exc:
            yield self.problem(str(exc))
            return
        version = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("Version:")), "")
        if not version:
            yield self.problem(f"haproxy admin socket {s.haproxy_socket}: 'show info' answered {info.strip()[:80]!r}")
            return
        yield self.ok(f"haproxy admin socket {s.haproxy_socket}: HAProxy {version} answers")
        if not s.haproxy_backend:
            yield self.problem("lb is haproxy but haproxy_backend is not set (WATCHER_HAPROXY_BACKEND)")
            return
        shifter = HAProxyShifter(s.haproxy_socket, s.haproxy_backend)
        try:
            servers = shifter.servers()
        except ActionError as exc:
            yield self.problem(str(exc))
            return
        yield self.ok(f"haproxy backend {s.haproxy_backend}: {len(servers)} server(s)")
        yield from self._upstreams_known(shifter.get_weight, f"haproxy backend {s.haproxy_backend}", replica_of)

    def _upstreams_known(
        self, weight_of: Callable[[Any], int], where: str, replica_of: Callable[..., Any]
    ) -> Iterator[Line]:
        """Each remediable container's upstream must be one the load balancer has, or drain fails."""
        from watcher.actions.base import ActionError

        for c in self.containers:
            replica = replica_of(c)
            if replica is None:
                continue
            try:
                weight = weight_of(replica)
            except ActionError as exc:
                yield self.problem(f"container {c.key}: {exc}")
                continue
            yield self.ok(f"container {c.key}: {where} has {c.upstream} at weight {weight}")

    # -- model repository, Alertmanager, store ----------------------------------------------------------
    def model_repo(self) -> Iterator[Line]:
        repo = self.settings.model_repo
        if repo is None:
            yield self.warning("model_repo is not set: a restart is verified against the version served before")
            return
        if not repo.is_dir():
            yield self.problem(f"model_repo {repo}: no such directory")
            return
        yield self.ok(f"model_repo {repo}: readable")
        for model in sorted({c.model for c in self.containers if c.model}):
            versions = sorted(p.name for p in (repo / model).glob("*") if p.is_dir() and p.name.isdigit())
            if not versions:
                yield self.problem(f"model_repo {repo}: no numbered version directory under {repo / model}")
            else:
                yield self.ok(f"model {model}: versions {', '.join(versions)} in {repo / model}")

    def alertmanager(self) -> Iterator[Line]:
        url = self.settings.alertmanager_url
        if self.settings.webhook_url:
            hook = redact_url(self.settings.webhook_url, keep_path=False)
            yield self.ok(f"webhook ({hook}): not probed (a probe would deliver a message)")
        if not url:
            if not self.settings.webhook_url:
                yield self.warning("no alertmanager_url or webhook_url: alerts are only logged")
            return
        shown = redact_url(url)
        base = url.rstrip("/").removesuffix("/api/v2/alerts")
        try:
            self.http.get(f"{base}/-/ready", timeout=self.timeout_s).raise_for_status()
        except requests.RequestException as exc:
            yield self.problem(f"alertmanager ({shown}): not ready: {_why(exc)}")
            return
        yield self.ok(f"alertmanager ({shown}): ready")

    def store(self) -> Iterator[Line]:
        from watcher.store import Store, StoreError

        path = self.settings.store
        if not path.exists():
            parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
            if os.access(parent, os.W_OK):
                yield self.ok(f"store {path}: does not exist yet ('watcher run' creates it)")
            else:
                yield self.problem(f"store {path}: does not exist and {parent} is not writable")
            return
        try:
            Store(path, read_only=True).close()
        except StoreError as exc:
            yield self.problem(str(exc))
            return
        if not os.access(path, os.W_OK):
            yield self.problem(f"store {path}: read-only for this user ('watcher run' would exit 74)")
            return
        yield self.ok(f"store {path}: a watcher store, writable")


def _why(exc: BaseException) -> str:
    """One short line for a failure (requests' text is a paragraph of urllib3 internals)."""
    if isinstance(exc, requests.Timeout):
        return "timeout: no answer in time"
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or reset"
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    for marker, short in (
        ("Connection refused", "connection refused"),
        ("timed out", "timeout: no answer in time"),
        ("No such file or directory", "no such socket or file"),
        ("Permission denied", "permission denied"),
    ):
        if marker in text:  # docker-py wraps urllib3's paragraph: keep what an operator acts on
            return short
    return text if len(text) <= 300 else text[:300] + "..."
