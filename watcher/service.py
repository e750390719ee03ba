"""`watcher run`: the live watcher as a long-running service.

Wires configuration to the parts: sources and engine (:mod:`watcher.live`), policy and executor
(:mod:`watcher.policy`, :mod:`watcher.playbook`), the API (:mod:`watcher.api`), a heartbeat
alert, and hot reload of rule packs (SIGHUP or a changed file; a bad pack is reported with
``file:line:col`` and the last good one stays live). SIGTERM/SIGINT stop the sources, let the
engine drain the queue, give running playbook steps ``shutdown_grace_s`` to finish (the journal
hands anything unfinished to the next start) and flush the store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import docker

from watcher.actions.alerts import AlertmanagerAlerter, WebhookAlerter
from watcher.actions.base import ActionError, Alert, Alerter, TrafficShifter
from watcher.actions.haproxy import HAProxyShifter
from watcher.actions.nginx import ContainerNginxReload, HostNginxReload, NginxReload, NginxShifter
from watcher.api import Api, positive_seconds
from watcher.assembly import assemble
from watcher.config import Settings
from watcher.engine_alerts import EngineAlerts
from watcher.fleet import replica_of
from watcher.inventory import make_clients
from watcher.live import LiveConfig
from watcher.metrics import WatcherMetrics
from watcher.model import Finding, Predicts, Target
from watcher.playbook.executor import ExecutorConfig
from watcher.policy import GuardConfig
from watcher.redact import redact_doc, redact_text, redact_url
from watcher.retry import Backoff
from watcher.rulepack.compile import CompileOptions, RuleSet, compile_packs
from watcher.rulepack.loader import RulePackError
from watcher.sources.file_logs import FileSpec
from watcher.store import Store
from watcher.timefmt import format_rfc3339

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


class ApiListenError(RuntimeError):
    """The API's address cannot be bound (a port in use): `watcher run` says so in one line, exit 2."""


class Service:
    def __init__(self, settings: Settings, ruleset: RuleSet) -> None:
        self.settings = settings
        self.ruleset = ruleset
        self.started = time.time()
        # first: a store another watcher holds, or one that cannot be written, refuses before anything starts
        store = Store(settings.store, writer=True)
        # ``engines: {}`` (the Kubernetes manifest): no Docker engine at all, observe-and-alert only --
        # Prometheus series in, alerts out; no Docker source, no restart, nothing to act on
        self.clients: dict[str, docker.DockerClient] = make_clients(settings.engines) if settings.engines else {}
        self.shifter = self._shifter()
        live_config = LiveConfig(
            engines=self.clients,
            label_selector=tuple(settings.label_selector),
            service_label=settings.service_label,
            upstream_label=settings.upstream_label,
            prometheus_url=settings.prometheus_url,
            prometheus_target_label=settings.prometheus_target_label,
            prometheus_interval_s=settings.prometheus_interval_s,
            prometheus_window=settings.prometheus_window,
            stats_interval_s=settings.effective_stats_interval_s,
            memory_near_interval_s=settings.memory_near_interval_s,
            cgroup_root=settings.cgroup_root,
            probe_interval_s=settings.probe_interval_s or None,
            probe_timeout_s=settings.probe_timeout_s,
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
            alert_sinks=self._alert_sinks(),
            alert_queue_max=settings.alert_queue_max,
            alert_secrets=settings.secrets,
            guard=GuardConfig(
                dry_run=settings.dry_run,
                backoff_base_s=settings.restart_backoff_s,
                restart_takes_s=settings.restart_takes_s,
            ),
            executor_config=ExecutorConfig(
                model_repo=settings.model_repo,
                pinned_versions=dict(settings.pinned_versions),
                alert_resend_s=settings.alert_resend_s,
                external_url=settings.api_url,
                replica_label=settings.prometheus_target_label,
            ),
            model_label=settings.model_label,
            protocol_label=settings.protocol_label,
            on_finding=self._on_finding,
            on_event=self._on_event,
        )
        self.store, self.journal, self.policy = parts.store, parts.journal, parts.policy
        self.fleet, self.executor, self.live = parts.fleet, parts.executor, parts.live
        self.parts, self.decisions = parts, parts.decisions
        self.alerter, self.outboxes = parts.alerter, parts.outboxes
        self.policy.set_dry_run(settings.dry_run)  # the configuration at start wins over a stored toggle
        if store.replaced is not None:  # the guard rails were lost with the corrupt store: act only when told
            self.policy.set_paused(True, self.started)
        self._metrics()
        self.live.on_batch = self._on_batch
        try:
            self.api = self._api(settings)
        except OSError as exc:  # the port is taken (or the address is not this host's): nothing started yet
            store.close()
            host, port = settings.api_address
            raise ApiListenError(f"cannot listen on {host}:{port} (api_listen): {exc.strerror or exc}") from None
        if not settings.external_url:  # the port actually bound (api_listen may say :0)
            self.executor.config.external_url = f"{settings.api_url.rsplit(':', 1)[0]}:{self.api.port}"
        self._stop = threading.Event()
        self.exit_code = 0  # 1 when the service stopped itself because an essential thread died
        self._first_finding: dict[str, float] = {}
        self._blind: Alert | None = None  # the "watcher blind" alert while it fires
        self._blind_sent = 0.0  # when it was last (re-)sent
        self._replaced: Alert | None = None  # the "store replaced" alert while actions stay paused
        self._replaced_sent = 0.0
        self._pack_mtimes = self._mtimes()
        self.engine_alerts = EngineAlerts(
            self.fleet.inventory,
            lambda: self.alerter,
            resend_s=settings.alert_resend_s,
            redact=lambda text: redact_text(text, settings.secrets),
        )

    def _api(self, settings: Settings) -> Api:
        return Api(
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
            incident=self.incident,
        )

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
                if not self.clients:
                    raise ValueError("nginx_container needs a Docker engine (engines), and none is configured")
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

    def _alert_sinks(self) -> dict[str, Alerter]:
        """The receivers, each behind its own outbox. They try twice: the outbox retries for as long
        as a receiver is down, so their own retries would only hold up its delivery thread."""
        quick = Backoff(base_s=0.5, cap_s=1.0, attempts=2)
        # the re-sends of an open incident's alert must get past the receivers' dedup window; each
        # delivery stays active for three re-send periods (see watcher.playbook.alerting)
        resend = self.settings.alert_resend_s
        timing: dict[str, Any] = {"dedup_window_s": min(60.0, resend / 2), "firing_ttl_s": 3 * resend}
        sinks: dict[str, Alerter] = {}
        if self.settings.alertmanager_url:
            sinks["alertmanager"] = AlertmanagerAlerter(self.settings.alertmanager_url, backoff=quick, **timing)
        if self.settings.webhook_url:
            token = self.settings.webhook_token.get_secret_value() if self.settings.webhook_token else None
            sinks["webhook"] = WebhookAlerter(self.settings.webhook_url, token, backoff=quick, **timing)
        return sinks

    def _metrics(self) -> None:
        self.metrics = WatcherMetrics()
        self.registry = self.metrics.registry
        self.metrics.watch(self)

    # -- callbacks ------------------------------------------------------------------------------
    def _on_finding(self, finding: Finding) -> None:
        self.metrics.finding(finding)
        key = finding.target.key
        fields = {"target": key, "rule": finding.rule_id, "predicts": finding.predicts.value, "eta_s": finding.eta_s}
        log.info("finding resolved" if finding.resolved else "finding", extra={"fields": fields})
        if finding.resolved:
            self.executor.on_finding(finding)  # a plan that only moved traffic waits for this
            return
        if finding.pack == FAILURE_PACK and finding.predicts in FAILURES:
            first = self._first_finding.pop(key, None)
            if first is not None and first <= finding.ts:
                self.metrics.lead.observe(finding.ts - first)
        else:
            self._first_finding.setdefault(key, finding.ts)
        self.executor.on_finding(finding)

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        log.info(kind, extra={"fields": data})

    def _on_batch(self, n: int, seconds: float) -> None:
        self.metrics.update.observe(seconds)

    # -- API ---------------------------------------------------------------------------------------
    def _health(self) -> tuple[bool, dict[str, Any]]:
        alive = {"engine": self.live.alive, "decisions": self.decisions.alive}
        return all(alive.values()), {"uptime_s": round(time.time() - self.started, 1), "threads": alive}

    def _ready(self) -> tuple[bool, dict[str, Any]]:
        sources = {s.name: s.connected for s in self.live.sources}
        writable = self.store.writable()
        healthy, _ = self._health()
        detail: dict[str, Any] = {
            "watching": self._watching(),
            "sources": sources,
            "store_writable": writable,
            "store": self.store.health(),
        }
        engines = self.fleet.inventory.engine_states()
        # why a source is down: the engine it cannot reach, in the one line the log had
        detail["engines"] = {
            name: {
                "reachable": (up := state.listed or state.streaming),
                "error": None if up or not state.error else redact_text(state.error, self.settings.secrets),
            }
            for name, state in engines.items()
        }
        return bool(sources) and all(sources.values()) and writable and healthy, detail

    def _watching(self) -> dict[str, str]:
        """What the watcher can and cannot see, in words for the operator (``/readyz``): each kind of
        signal, and whether the watcher can act. Without a Docker engine it is observe-and-alert only."""
        s = self.settings
        connected = {src.name: src.connected for src in self.live.sources}
        prom = self.live.prometheus
        out: dict[str, str] = {}
        if not s.engines:
            out["docker"] = "not configured (engines: {}): no container logs, events or stats; observe-and-alert only"
        else:
            docker_ok = all(v for k, v in connected.items() if k.startswith("docker"))
            out["docker"] = "connected" if docker_ok else "unavailable: engine not reachable (retrying)"
        if prom is None:
            out["prometheus"] = "not configured (prometheus_url): no series-based rules"
        else:
            out["prometheus"] = "connected" if prom.connected else f"unavailable: {prom.last_error or 'no answer yet'}"
        out["log_files"] = f"{len(s.log_files)} file(s)" if s.log_files else "none configured"
        if not s.engines:
            out["actions"] = "none possible: no Docker engine to restart through (alerts only)"
        else:
            out["actions"] = "dry run (alerts only)" if s.dry_run else "enabled"
        if not connected:
            out["problem"] = "nothing to watch: configure engines, prometheus_url or log_files"
        return out

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
            "restarts": {k: list(v) for k, v in policy.restarts.items() if v},
            # each pack's budget (most share the default): restarts per replica within ``per_s``
            "restart_budgets": [
                {"count": count, "per_s": per}
                for count, per in sorted(
                    {(d.max_restarts.count, d.max_restarts.per) for _r, d in self.executor.rules.values()}
                )
            ],
        }

    def replica_state(self, key: str) -> dict[str, Any]:
        """What the inventory and the load balancer say of one target now: running, Docker health,
        live and configured weight (None where unknown: no container, no LB, or the LB unreachable)."""
        container = self.fleet.inventory.snapshot().by_key(key)
        out: dict[str, Any] = {"running": None, "health": None, "weight": None, "original_weight": None}
        if container is None:
            return out
        out.update(running=container.running, health=container.health)
        replica = replica_of(container)
        if replica is not None and not isinstance(self.shifter, _NoShifter):
            try:
                out.update(
                    weight=self.shifter.get_weight(replica), original_weight=self.shifter.original_weight(replica)
                )
            except Exception as exc:  # an LB that does not list the replica: the page says "unknown"
                log.debug("status: no weight", extra={"fields": {"target": key, "error": str(exc)}})
        return out

    def status(self) -> dict[str, Any]:
        engine = self.live.engine
        firing: dict[str, list[dict[str, Any]]] = {}
        for entry in engine.states.firing():
            rule = engine.rules.get(entry.rule_id)
            obs = engine.evidence(entry.rule_id, entry.target_key)
            firing.setdefault(entry.target_key, []).append(
                {
                    "rule": entry.rule_id,
                    "predicts": rule.predicts.value if rule is not None and rule.predicts else None,
                    "severity": rule.severity.value if rule is not None else None,
                    "since": entry.fired_at,
                    "eta_s": obs.eta_s if obs is not None else None,
                    "evidence": obs.evidence if obs is not None else "",
                    "observed": obs.ts if obs is not None else None,
                }
            )
        open_incidents = {i.target: i.to_json() for i in self.journal.incidents(open_only=True)}
        targets = {
            key: {
                "container": t.container,
                "engine": t.engine,
                "service": t.service,
                **self.replica_state(key),
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
            "alert_queues": {o.name: o.stats() for o in self.outboxes},
            "blind": {
                "prometheus_unreachable_since": self.live.prometheus.unreachable_since
                if self.live.prometheus
                else None,
                "alerting": self._blind is not None,
            },
            **self.live.status(),
        }
        # sources report their URLs and errors (which quote URLs): nothing secret leaves
        return dict(redact_doc(doc, self.settings.secrets))

    def incident(self, incident_id: int) -> dict[str, Any] | None:
        """GET /incidents/<id>, where an alert's generatorURL points: the incident as /status shows it."""
        found = self.journal.incident(incident_id)
        if found is None:
            return None
        doc = found.to_json()
        alert = self.executor.alerts.active().get(incident_id)
        doc["alert"] = None if alert is None else {"labels": dict(alert.labels), "annotations": dict(alert.annotations)}
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
            self._check_blind(now)
            if self.clients:  # an engine that does not answer: its replicas are unknown, say so by name
                self.engine_alerts.check(now)
            self.executor.alerts.tick(now)
            self._keep_replaced_alert(now)
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
        self._replaced = alert
        self._replaced_sent = time.time()
        self._fire(alert, "store-replaced alert")

    def _keep_replaced_alert(self, now: float) -> None:
        """The store-replaced alert stays active while actions stay paused (re-sent like an incident's
        alert), and is resolved once someone resumed them: they have looked."""
        alert = self._replaced
        if alert is None:
            return
        if not self.policy.paused:  # a bool read: safe off the decision thread
            self._replaced = None
            try:
                self.alerter.resolve(dataclasses.replace(alert, ends_at=now))
            except ActionError as exc:
                log.warning("store-replaced resolve not delivered", extra={"fields": {"error": str(exc)}})
        elif now - self._replaced_sent >= self.settings.alert_resend_s:
            self._replaced_sent = now
            self._fire(alert, "store-replaced alert")

    def _check_blind(self, now: float) -> None:
        """Prometheus unreachable for ``prometheus_blind_after_s``: the watcher sees none of its
        series, so it cannot predict (and, by design, finds nothing from stale ones). Say so once,
        as a warning, and resolve it when a query answers again."""
        source = self.live.prometheus
        since = source.unreachable_since if source is not None else None
        if since is not None and self._blind is None and now - since >= self.settings.prometheus_blind_after_s:
            url = redact_url(source.url) if source is not None else ""
            self._blind = Alert.build(
                "ServingWatcherBlind",
                None,
                severity="warning",
                labels={"source": "prometheus"},
                annotations={
                    "summary": f"watcher blind: Prometheus unreachable since {format_rfc3339(since)} ({url}); "
                    "no predictions from its series until it answers"
                },
                starts_at=since,
            )
            log.warning("watcher blind: Prometheus unreachable", extra={"fields": {"since": since}})
            self._blind_sent = now
            self._fire(self._blind, "blind-spot alert")
        elif since is not None and self._blind is not None and now - self._blind_sent >= self.settings.alert_resend_s:
            self._blind_sent = now
            self._fire(self._blind, "blind-spot alert")  # still blind: keep it active (its endsAt moves on)
        elif since is None and self._blind is not None:
            blind, self._blind = self._blind, None
            log.info("Prometheus answers again", extra={"fields": {"blind_s": round(now - blind.starts_at, 1)}})
            try:
                self.alerter.resolve(dataclasses.replace(blind, ends_at=now))
            except ActionError as exc:
                log.warning("blind-spot resolve not delivered", extra={"fields": {"error": str(exc)}})

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
