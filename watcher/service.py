"""`watcher run`: the live watcher as a long-running service.

Wires configuration to the parts: sources and engine (:mod:`watcher.live`), policy and executor
(:mod:`watcher.policy`, :mod:`watcher.playbook`), the API (:mod:`watcher.api`), a heartbeat
alert, and hot reload of rule packs (SIGHUP or a changed file; a bad pack is reported with
``file:line:col`` and the last good one stays live). SIGTERM/SIGINT stop the sources, let the
engine drain the queue, give running playbook steps ``shutdown_grace_s`` to finish (the journal
hands anything unfinished to the next start) and flush the store.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import docker
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from watcher.actions.alerts import AlertmanagerAlerter, WebhookAlerter
from watcher.actions.base import ActionError, Alert, Alerter, TrafficShifter
from watcher.actions.haproxy import HAProxyShifter
from watcher.actions.nginx import ContainerNginxReload, HostNginxReload, NginxReload, NginxShifter
from watcher.api import Api, positive_seconds
from watcher.assembly import assemble
from watcher.config import Settings
from watcher.inventory import make_clients
from watcher.live import LiveConfig
from watcher.model import Finding, Predicts, Target
from watcher.playbook.executor import ExecutorConfig
from watcher.policy import GuardConfig
from watcher.redact import redact_doc, redact_text
from watcher.rulepack.compile import CompileOptions, RuleSet, compile_packs
from watcher.rulepack.loader import RulePackError
from watcher.sources.file_logs import FileSpec
from watcher.store import Store

log = logging.getLogger("watcher")
FAILURE_PACK = "docker"  # findings of this pack mark a failure that happened (for lead times)
FAILURES = {Predicts.OOM, Predicts.CRASH, Predicts.UNHEALTHY}
MAX_SILENCE_S = 30 * 86400.0  # a longer silence is a forgotten one: renew it instead


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the configuration's secrets and every URL's credentials and
    query masked: a library's exception text (requests names the URL it failed on) included."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(redact_doc(json.loads(json.dumps(doc, default=str)), self.secrets))


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class FanoutAlerter(Alerter):
    """Every configured alerter gets every alert; one failing does not stop the others."""

    def __init__(self, alerters: list[Alerter]) -> None:
        self.alerters = alerters

    def fire(self, alert: Alert) -> None:
        errors = []
        for a in self.alerters:
            try:
                a.fire(alert)
            except ActionError as exc:
                errors.append(str(exc))
        if errors:
            raise ActionError("; ".join(errors))

    def resolve(self, alert: Alert) -> None:
        for a in self.alerters:
            try:
                a.resolve(alert)
            except ActionError:
                log.warning("resolve failed", extra={"fields": {"alert": alert.name}})


class _NoShifter(TrafficShifter):
    """``lb: none``: the watcher can restart and verify, but cannot move traffic."""

    def set_weight(self, replica: Any, weight: int) -> None:
        raise ActionError("no load balancer configured (WATCHER_LB=none): cannot change weights")

    def get_weight(self, replica: Any) -> int:
        return 1

    def wait_idle(self, replica: Any, timeout_s: float) -> bool:
        return True

    def original_weight(self, replica: Any) -> int:
        return 1


class Service:
    def __init__(self, settings: Settings, ruleset: RuleSet) -> None:
        self.settings = settings
        self.ruleset = ruleset
        self.started = time.time()
        # first: a store another watcher holds, or one that cannot be written, refuses before anything starts
        store = Store(settings.store, writer=True)
        self.clients: dict[str, docker.DockerClient] = make_clients(settings.engines)
        self.shifter = self._shifter()
        self.alerter = self._alerter()
        live_config = LiveConfig(
            engines=self.clients,
            label_selector=tuple(settings.label_selector),
            service_label=settings.service_label,
            upstream_label=settings.upstream_label,
            prometheus_url=settings.prometheus_url,
            prometheus_target_label=settings.prometheus_target_label,
            prometheus_interval_s=settings.prometheus_interval_s,
            prometheus_window=settings.prometheus_window,
            stats_interval_s=settings.stats_interval_s or None if not settings.prometheus_url else None,
            files=[
                FileSpec(path, Target(name), load_balancer=name in settings.lb_log_files)
                for name, path in settings.log_files.items()
            ],
        )
        parts = assemble(
            store=store,
            clients=self.clients,
            ruleset=ruleset,
            live_config=live_config,
            shifter=self.shifter,
            alerter=self.alerter,
            guard=GuardConfig(dry_run=settings.dry_run),
            executor_config=ExecutorConfig(
                model_repo=settings.model_repo, pinned_versions=dict(settings.pinned_versions)
            ),
            model_label=settings.model_label,
            on_finding=self._on_finding,
            on_event=self._on_event,
        )
        self.store, self.journal, self.policy = parts.store, parts.journal, parts.policy
        self.fleet, self.executor, self.live = parts.fleet, parts.executor, parts.live
        self.parts, self.decisions = parts, parts.decisions
        self.policy.set_dry_run(settings.dry_run)  # the configuration at start wins over a stored toggle
        if store.replaced is not None:  # the guard rails were lost with the corrupt store: act only when told
            self.policy.set_paused(True, self.started)
        self._metrics()
        self.live.on_batch = self._on_batch
        self.api = Api(
            settings.api_address,
            self.registry,
            self._health,
            self._ready,
            self.status,
            {
                "silence": self._m_silence,
                "pause": self._m_pause,
                "resume": self._m_resume,
                "dry-run": self._m_dry_run,
            },
            settings.api_token.get_secret_value() if settings.api_token else None,
            protect_status=not settings.api_loopback_only,
        )
        self._stop = threading.Event()
        self.exit_code = 0  # 1 when the service stopped itself because an essential thread died
        self._first_finding: dict[str, float] = {}
        self._pack_mtimes = self._mtimes()

    # -- wiring -------------------------------------------------------------------------------
    def _shifter(self) -> TrafficShifter:
        s = self.settings
        if s.lb == "haproxy":
            if s.haproxy_socket is None:
                raise ValueError("lb: haproxy needs haproxy_socket (WATCHER_HAPROXY_SOCKET)")
            return HAProxyShifter(s.haproxy_socket, s.haproxy_backend)
        if s.lb == "nginx":
            if s.nginx_upstreams_file is None:
                raise ValueError("lb: nginx needs nginx_upstreams_file (WATCHER_NGINX_UPSTREAMS_FILE)")
            reload: NginxReload
            if s.nginx_container:
                reload = ContainerNginxReload(next(iter(self.clients.values())), s.nginx_container)
            else:
                args: tuple[str, ...] = ("-q",)
                if s.nginx_conf is not None:
                    args += ("-p", f"{s.nginx_conf.parent}/", "-c", str(s.nginx_conf))
                reload = HostNginxReload(
                    pid_file=s.nginx_pid_file, nginx=s.nginx_binary, args=args, error_log=s.nginx_error_log
                )
            return NginxShifter(s.nginx_upstreams_file, reload)
        return _NoShifter()

    def _alerter(self) -> Alerter:
        alerters: list[Alerter] = []
        if self.settings.alertmanager_url:
            alerters.append(AlertmanagerAlerter(self.settings.alertmanager_url))
        if self.settings.webhook_url:
            token = self.settings.webhook_token.get_secret_value() if self.settings.webhook_token else None
            alerters.append(WebhookAlerter(self.settings.webhook_url, token))
        return FanoutAlerter(alerters)

    def _metrics(self) -> None:
        self.registry = CollectorRegistry()
        self.m_findings = Counter(
            "watcher_findings", "Findings by what they predict", ["predicts", "rule"], registry=self.registry
        )
        self.m_lead = Histogram(
            "watcher_lead_time_seconds",
            "Seconds from the first predictive finding to the failure it announced",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.m_update = Histogram(
            "watcher_detector_update_seconds",
            "Engine time per signal batch (parse, match, detectors, rule state)",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(self))

    # -- callbacks ------------------------------------------------------------------------------
    def _on_finding(self, finding: Finding) -> None:
        self.m_findings.labels(finding.predicts.value, finding.rule_id).inc()
        key = finding.target.key
        fields = {"target": key, "rule": finding.rule_id, "predicts": finding.predicts.value, "eta_s": finding.eta_s}
        log.info("finding resolved" if finding.resolved else "finding", extra={"fields": fields})
        if finding.resolved:
            self.executor.on_finding(finding)  # a plan that only moved traffic waits for this
            return
        if finding.pack == FAILURE_PACK and finding.predicts in FAILURES:
            first = self._first_finding.pop(key, None)
            if first is not None and first <= finding.ts:
                self.m_lead.observe(finding.ts - first)
        else:
            self._first_finding.setdefault(key, finding.ts)
        self.executor.on_finding(finding)

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        log.info(kind, extra={"fields": data})

    def _on_batch(self, n: int, seconds: float) -> None:
        self.m_update.observe(seconds)

    # -- API ---------------------------------------------------------------------------------------
    def _health(self) -> tuple[bool, dict[str, Any]]:
        alive = {"engine": self.live.alive, "decisions": self.decisions.alive}
        return all(alive.values()), {"uptime_s": round(time.time() - self.started, 1), "threads": alive}

    def _ready(self) -> tuple[bool, dict[str, Any]]:
        sources = {s.name: s.connected for s in self.live.sources}
        writable = self.store.writable()
        healthy, _ = self._health()
        detail = {"sources": sources, "store_writable": writable, "store": self.store.health()}
        return all(sources.values()) and writable and healthy, detail

    def _policy_view(self) -> dict[str, Any]:
        """Read on the decision thread, which owns the policy (a read from the API thread could see
        a dict mid-update)."""
        policy = self.policy
        now = time.time()
        return {
            "dry_run": policy.config.dry_run,
            "paused": policy.paused,
            "silences": [
                {"matchers": dict(s.matchers), "until": s.until, "comment": s.comment}
                for s in policy.silences
                if s.until > now
            ],
            "breakers": {k: dict(v) for k, v in policy.breakers.items()},
        }

    def status(self) -> dict[str, Any]:
        engine = self.live.engine
        firing: dict[str, list[dict[str, Any]]] = {}
        for entry in engine.states.firing():
            rule = engine.rules.get(entry.rule_id)
            firing.setdefault(entry.target_key, []).append(
                {
                    "rule": entry.rule_id,
                    "predicts": rule.predicts.value if rule is not None and rule.predicts else None,
                    "since": entry.fired_at,
                }
            )
        open_incidents = {i.target: i.to_json() for i in self.journal.incidents(open_only=True)}
        targets = {
            key: {
                "container": t.container,
                "engine": t.engine,
                "service": t.service,
                "findings": firing.get(key, []),
                "incident": open_incidents.get(key),
            }
            for key, t in sorted(engine.targets.items())
        }
        try:
            policy: dict[str, Any] = self.decisions.call(self._policy_view, timeout_s=5.0)
        except (TimeoutError, RuntimeError) as exc:
            policy = {"unavailable": str(exc)}
        doc = {
            "targets": targets,
            "policy": policy,
            "decisions": self.decisions.stats(),
            "recent_incidents": [i.to_json() for i in self.journal.incidents(limit=20)],
            **self.live.status(),
        }
        # sources report their URLs and errors (which quote URLs): nothing secret leaves
        return dict(redact_doc(doc, self.settings.secrets))

    def _m_silence(self, body: dict[str, Any]) -> dict[str, Any]:
        matchers = body.get("matchers")
        if not isinstance(matchers, dict) or not matchers:
            raise ValueError('matchers: a non-empty object such as {"target": "local/tfs-1"}')
        duration = positive_seconds(body, "duration_s", 3600.0, MAX_SILENCE_S)
        now = time.time()
        clean = {str(k): str(v) for k, v in matchers.items()}
        comment = str(body.get("comment", ""))
        self.decisions.call(lambda: self.policy.silence(clean, now + duration, comment, now))
        return {"silenced": matchers, "until": now + duration}

    def _m_pause(self, body: dict[str, Any]) -> dict[str, Any]:
        self.decisions.call(lambda: self.policy.set_paused(True, time.time()))
        return {"paused": True}

    def _m_resume(self, body: dict[str, Any]) -> dict[str, Any]:
        self.decisions.call(lambda: self.policy.set_paused(False, time.time()))
        return {"paused": False}

    def _m_dry_run(self, body: dict[str, Any]) -> dict[str, Any]:
        enabled = body.get("enabled")
        if not isinstance(enabled, bool):
            raise ValueError("enabled: true or false")
        self.decisions.call(lambda: self.policy.set_dry_run(enabled, time.time()))
        return {"dry_run": enabled}

    # -- reload ------------------------------------------------------------------------------------
    def _mtimes(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.settings.packs:
            files = sorted(p.glob("*.y*ml")) if p.is_dir() else [p]
            for f in files:
                try:
                    out[str(f)] = f.stat().st_mtime
                except OSError:
                    out[str(f)] = -1.0
        return out

    def reload(self) -> bool:
        """Compile the packs again and swap the whole rule set (engine, Prometheus queries,
        executor rules); on any error keep the running one and report every error at file:line:col."""
        self._pack_mtimes = self._mtimes()
        try:
            ruleset = compile_packs(self.settings.packs, compile_options(self.settings))
        except RulePackError as exc:
            for error in exc.errors:
                log.error("rule pack rejected; the last good packs stay live", extra={"fields": {"error": str(error)}})
            return False
        self.ruleset = ruleset
        rules = dict(ruleset.executor_rules)

        def swap_rules() -> None:
            self.executor.rules = rules

        # the decision thread reads the executor's rules: swap them between two of its decisions
        if self.decisions.alive:
            self.decisions.call(swap_rules)
        else:
            swap_rules()
        self.live.request_reload(ruleset)
        log.info("rule packs reloaded", extra={"fields": {"rules": ruleset.rule_count}})
        return True

    # -- run ---------------------------------------------------------------------------------------
    def start(self) -> Service:
        if self.store.replaced is not None:
            self._alert_store_replaced(self.store.replaced)
        self.parts.start()
        self.api.start()
        threading.Thread(target=self._background, name="housekeeping", daemon=True).start()
        log.info(
            "watching",
            extra={
                "fields": {
                    "api": f"{self.settings.api_address[0]}:{self.api.port}",
                    "dry_run": self.policy.config.dry_run,
                    "rules": self.ruleset.rule_count,
                    "lb": self.settings.lb,
                }
            },
        )
        return self

    def _background(self) -> None:
        """Heartbeat and pack reload; and liveness: when an essential thread (engine, decisions) has
        died, the heartbeat stops (the dead man's switch pages) and the process ends with status 1,
        so the container's restart policy starts a fresh watcher and the journal hands it the rest."""
        last_beat = 0.0
        while not self._stop.wait(min(self.settings.reload_poll_s, 1.0)):
            now = time.time()
            healthy, detail = self._health()
            if not healthy:
                log.error("an essential thread died; stopping", extra={"fields": detail})
                self.exit_code = 1
                self._stop.set()
                return
            if now - last_beat >= self.settings.heartbeat_s:
                self._heartbeat(now)
                last_beat = now
            if self._mtimes() != self._pack_mtimes:
                self.reload()

    def _alert_store_replaced(self, aside: str) -> None:
        """The store was corrupt and a fresh one started (see :mod:`watcher.store`): say what was lost."""
        summary = (
            f"watcher store was corrupt; moved to {aside} and a fresh store started. Lost: guard-rail history "
            "(cooldowns, restart budgets, breakers, silences), log cursors (logs re-read from the backfill "
            "window), open incidents (check for replicas left drained). Actions are paused: POST /resume to act."
        )
        log.error("store replaced", extra={"fields": {"corrupt_store": aside}})
        alert = Alert(
            name="ServingWatcherStoreReplaced",
            labels={"alertname": "ServingWatcherStoreReplaced", "severity": "critical"},
            annotations={"summary": summary},
            starts_at=self.started,
        )
        self._fire(alert, "store-replaced alert")

    def _heartbeat(self, now: float) -> None:
        """The watchdog alert: always firing while the watcher lives; it lapses when we die."""
        alert = Alert(
            name="ServingWatcherWatchdog",
            labels={"alertname": "ServingWatcherWatchdog", "severity": "none"},
            annotations={"summary": "serving-watcher is alive (this alert always fires; silence means death)"},
            starts_at=self.started,
            # outlive the alerter's dedup window (60 s), which may swallow the refreshes in between
            ends_at=now + 3 * max(self.settings.heartbeat_s, 60.0),
        )
        self._fire(alert, "heartbeat")

    def _fire(self, alert: Alert, what: str) -> None:
        """The service's own alerts (heartbeat, store replaced): a failed delivery is logged, never raised."""
        try:
            self.alerter.fire(alert)
        except ActionError as exc:
            # the alerters' messages name only the host; mask again in case a receiver echoed more
            error = redact_text(str(exc), self.settings.secrets)
            log.warning(f"{what} not delivered", extra={"fields": {"error": error}})

    def stop(self) -> None:
        self._stop.set()
        self.parts.stop(self.settings.shutdown_grace_s)
        self.api.stop()
        self.store.close()
        log.info("stopped")

    def run_forever(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self.reload, daemon=True).start())
        return self.serve()

    def serve(self) -> int:
        """Start, run until stopped (a signal, or an essential thread that died), stop; the exit status."""
        self.start()
        while not self._stop.wait(0.5):
            pass
        self.stop()
        return self.exit_code


class _LiveCollector(Collector):
    """Counts read at scrape time from the engine, queue, sources and journal."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterable[Any]:
        s = self.service
        stats = s.live.engine.stats
        lines = CounterMetricFamily("watcher_lines", "Log lines processed")
        lines.add_metric([], stats.lines)
        samples = CounterMetricFamily("watcher_samples", "Series samples processed")
        samples.add_metric([], stats.samples)
        events = CounterMetricFamily("watcher_lifecycle_events", "Docker lifecycle events processed")
        events.add_metric([], stats.lifecycle_events)
        dropped = CounterMetricFamily("watcher_dropped_signals", "Signals dropped by a full queue", labels=["source"])
        for source, n in s.live.queue.dropped.items():
            dropped.add_metric([source], n)
        depth = GaugeMetricFamily("watcher_queue_depth", "Signals waiting for the engine")
        depth.add_metric([], s.live.queue.depth)
        connected = GaugeMetricFamily("watcher_source_connected", "1 when a source is connected", labels=["source"])
        for src in s.live.sources:
            connected.add_metric([src.name], 1.0 if src.connected else 0.0)
        actions = CounterMetricFamily("watcher_actions", "Playbook steps by outcome", labels=["step", "outcome"])
        for (step, outcome), n in s.journal.step_counts().items():
            actions.add_metric([step, outcome], n)
        incidents = CounterMetricFamily("watcher_incidents", "Incidents by state", labels=["state"])
        for state, n in s.journal.incident_counts().items():
            incidents.add_metric([state], n)
        dry = GaugeMetricFamily("watcher_dry_run", "1 while the watcher only plans")
        dry.add_metric([], 1.0 if s.policy.config.dry_run else 0.0)
        store = s.store.health()
        store_errors = CounterMetricFamily("watcher_store_write_errors", "Failed store writes (disk full, read-only)")
        store_errors.add_metric([], store["write_errors"])
        store_ok = GaugeMetricFamily("watcher_store_writable", "1 while the latest store write succeeded")
        store_ok.add_metric([], 1.0 if store["write_ok"] else 0.0)
        yield from (lines, samples, events, dropped, depth, connected, actions, incidents, dry, store_errors, store_ok)


def compile_options(settings: Settings) -> CompileOptions:
    """What the settings decide about the rule set: Prometheus label and window, cooldown override."""
    return CompileOptions(
        prometheus_target_label=settings.prometheus_target_label,
        prometheus_window=settings.prometheus_window,
        cooldown_override_s=settings.cooldown_override_s,
    )


def load_or_explain(settings: Settings) -> RuleSet:
    try:
        return compile_packs(settings.packs, compile_options(settings))
    except RulePackError as exc:
        for error in exc.errors:
            print(str(error), file=sys.stderr)
        raise


def run(settings: Settings) -> int:
    setup_logging(settings.log_level, settings.secrets)
    service = Service(settings, load_or_explain(settings))
    return service.run_forever()


__all__ = ["Service", "Settings", "run"]
