"""The live driver: real sources, the wall clock, one engine thread.

Sources read Docker and Prometheus in their own threads and put envelopes in the bounded queue;
this driver's single engine thread takes batches, feeds the engine, commits the batch's cursors
*after* processing (at-least-once, deduplicated by cursor: nothing lost, nothing repeated),
ticks the engine every second and checkpoints its state. Findings go to the ``on_finding`` callback,
which only enqueues them for the decision thread (:mod:`watcher.decisions`): this thread never waits
on Docker, a load balancer or a model server to decide what to do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher.clock import Clock, WallClock
from watcher.engine import Engine
from watcher.inventory import Inventory, LabelNames, make_clients
from watcher.model import SERIES_ONLY_ENGINE, Finding, Target
from watcher.rulepack.compile import CompileOptions, RuleSet, compile_packs
from watcher.rulepack.schema import RulePack
from watcher.sources.base import SignalQueue, Source
from watcher.sources.docker_events import DockerEventsSource
from watcher.sources.docker_logs import DockerLogsSource
from watcher.sources.docker_stats import SERIES as DOCKER_STATS_SERIES
from watcher.sources.docker_stats import DockerStatsSource
from watcher.sources.file_logs import FileLogsSource, FileSpec
from watcher.sources.probes import ProbesSource
from watcher.sources.prometheus import PrometheusSource, PromQuery
from watcher.store import Store, StoreError

log = logging.getLogger("watcher")


@dataclass
class LiveConfig:
    engines: Mapping[str, Any] | None = None  # name -> Docker URL or client; None: the local engine from env
    label_selector: tuple[str, ...] = ("watcher.enable=true",)
    service_label: str = "watcher.service"
    upstream_label: str = "watcher.upstream"  # "127.0.0.1:8501": how the LB addresses the replica
    prometheus_url: str | None = None
    prometheus_target_label: str = "replica"
    prometheus_interval_s: float = 15.0
    prometheus_window: str = "1m"  # replaces $window in series queries: at least 4 scrape intervals
    stats_interval_s: float | None = 5.0  # None: no Docker stats
    memory_near_interval_s: float = 0.0  # 0: no faster memory reads near the limit
    cgroup_root: Path | None = None  # None: Docker stats only, never the cgroup files
    probe_interval_s: float | None = 0.5  # None: no active probes (they need Docker's upstream labels)
    probe_timeout_s: float = 0.3
    # host log files; those marked load_balancer (the Nginx access/error logs) are the only lines
    # the engine attributes to the replica behind their upstream_addr
    files: list[FileSpec] = field(default_factory=list)
    tick_s: float = 1.0
    checkpoint_s: float = 10.0
    rescan_s: float = 5.0
    backfill_s: float | None = 300.0
    batch: int = 512
    # let a batch gather for this long once a signal is there: one engine pass and one cursor commit
    # per 50 ms instead of per line (a fleet's followers put lines one at a time), for at most 50 ms
    # more from a line to its finding
    linger_s: float = 0.05


class LiveWatcher:
    def __init__(
        self,
        config: LiveConfig,
        rules: RuleSet | Sequence[RulePack],
        store: Store,
        clock: Clock | None = None,
        on_finding: Callable[[Finding], object] | None = None,
        inventory: Inventory | None = None,
    ) -> None:
        """``inventory``: shared with the fleet (``assemble``); without it, one over ``config.engines``."""
        self.config = config
        self.store = store
        self.clock = clock or WallClock()
        self.ruleset = self._compiled(rules)
        self.load_balancers = tuple(dict.fromkeys(f.target for f in config.files if f.load_balancer))
        self.engine = Engine(self.ruleset, self.clock, store=store, load_balancers=self.load_balancers)
        self.queue = SignalQueue()
        self.on_finding = on_finding
        self.on_batch: Callable[[int, float], None] | None = None  # (signals, seconds): detector update cost
        self._reload: RuleSet | None = None
        # the latest findings, for status and tests; bounded: a watcher runs for months
        self.findings: deque[Finding] = deque(maxlen=10_000)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_cursors: dict[str, str] = {}  # processed but not yet committed (store not writable)
        self._last_store_warning = -60.0
        self._by_name: dict[str, Target] = {}  # container name -> the watched container's Target
        self.inventory = inventory or Inventory(
            make_clients(config.engines),
            LabelNames(tuple(config.label_selector), config.service_label, config.upstream_label),
            rescan_s=config.rescan_s,
        )
        self.prometheus: PrometheusSource | None = None
        self.sources: list[Source] = self._make_sources(self.ruleset)

    def _compiled(self, rules: RuleSet | Sequence[RulePack]) -> RuleSet:
        """Packs are compiled with this driver's Prometheus label and window (the service passes
        a RuleSet it compiled itself with the same settings)."""
        if isinstance(rules, RuleSet):
            return rules
        cfg = self.config
        options = CompileOptions(
            prometheus_target_label=cfg.prometheus_target_label, prometheus_window=cfg.prometheus_window
        )
        return compile_packs(rules, options)

    def _make_sources(self, ruleset: RuleSet) -> list[Source]:
        cfg = self.config
        inventory = self.inventory  # the Docker sources read its one events stream and listing per engine
        sources: list[Source] = []
        if inventory.engine_names:  # none: observe-and-alert only (``engines: {}``), no Docker source at all
            sources += [
                DockerLogsSource(self.queue, self.store, backfill_s=cfg.backfill_s, inventory=inventory),
                DockerEventsSource(self.queue, self.store, inventory=inventory),
            ]
        if cfg.stats_interval_s and self._docker_stats_on:
            sources.append(
                DockerStatsSource(
                    self.queue,
                    interval_s=cfg.stats_interval_s,
                    inventory=inventory,
                    near_interval_s=cfg.memory_near_interval_s,
                    cgroup_root=cfg.cgroup_root,
                )
            )
        if cfg.probe_interval_s and inventory.engine_names:  # a replica's address is its Docker label
            sources.append(
                ProbesSource(
                    self.queue, interval_s=cfg.probe_interval_s, timeout_s=cfg.probe_timeout_s, inventory=inventory
                )
            )
        if cfg.files:
            sources.append(FileLogsSource(self.queue, self.store, list(cfg.files)))
        if cfg.prometheus_url:
            # Even with no queries yet: a reload that adds a series: or PromQL rule hands them over.
            self.prometheus = PrometheusSource(
                self.queue,
                cfg.prometheus_url,
                self._prometheus_queries(ruleset),
                interval_s=cfg.prometheus_interval_s,
                resolve=self._resolve_series,
            )
            sources.append(self.prometheus)
        return sources

    @property
    def _docker_stats_on(self) -> bool:
        return bool(self.config.stats_interval_s) and bool(self.inventory.engine_names)

    def _prometheus_queries(self, ruleset: RuleSet) -> list[PromQuery]:
        """The packs' queries, less the series Docker stats give while they run: both would feed one
        detector input, cAdvisor's sample up to a scrape older than Docker's, so a leak's rise would
        be read twice and out of order. Series resolve only to containers Docker reports, so no
        replica loses its memory series by this."""
        if not self._docker_stats_on:
            return list(ruleset.queries)
        return [q for q in ruleset.queries if q.id not in DOCKER_STATS_SERIES]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> LiveWatcher:
        for source in self.sources:
            source.start()
        self.inventory.start()  # after the sources: the first events stream resumes from their cursor
        self.refresh_upstreams()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.inventory.stop()
        for source in self.sources:
            source.stop()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._commit_cursors()
        self._checkpoint()

    def __enter__(self) -> LiveWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _resolve_series(self, query: PromQuery, labels: Mapping[str, str]) -> Target | None:
        """A Prometheus series names its container by a label; the Target is the watched container's
        own (engine, service), so peers compare by service and the capacity rails see the service.
        Series of containers the watcher does not watch are dropped. Without any Docker engine
        (observe-and-alert, ``engines: {}``) the series' own label is the replica: a pod's cAdvisor
        or server series then still raise findings, and alerts, under ``prometheus/<name>``."""
        name = labels.get(query.target_label, "")
        if not self.inventory.engine_names:
            service = labels.get(query.service_label) if query.service_label else None
            return Target(name, engine=SERIES_ONLY_ENGINE, service=service) if name else None
        return self._by_name.get(name.lstrip("/"))

    def refresh_upstreams(self) -> None:
        """Map load-balancer addresses (and container names) to the running watched replicas, and
        mark the load balancer's own sources (its host log files, and watched containers labelled
        ``watcher.role=load-balancer``), from the inventory's snapshot: no Docker call, so the
        engine thread may do it."""
        mapping: dict[str, Target] = {}
        by_name: dict[str, Target] = {}
        balancers = {t.key for t in self.load_balancers}
        for c in self.inventory.snapshot().current():
            if c.load_balancer:
                balancers.add(c.key)  # also while stopped: its last lines may still be queued
            if not c.running:
                continue
            by_name.setdefault(c.name, c.target)
            if c.upstream and not c.load_balancer:
                mapping[c.upstream] = c.target
        self.engine.upstreams = mapping
        self.engine.load_balancers = frozenset(balancers)
        self._by_name = by_name

    # -- the engine thread ------------------------------------------------------------------------
    def _run(self) -> None:
        last_tick = last_checkpoint = last_rescan = time.monotonic()
        while not self._stop.is_set() or self.queue.depth:
            batch = self.queue.get_batch(self.config.batch, timeout_s=self.config.tick_s, linger_s=self.config.linger_s)
            found: list[Finding] = []
            if self._reload is not None:
                self._swap_engine(self._reload)
            if batch:
                started = time.perf_counter()
                found.extend(self.engine.feed_batch([e.signal for e in batch]))
                if self.on_batch is not None:
                    self.on_batch(len(batch), time.perf_counter() - started)
                self._pending_cursors.update(e.cursor for e in batch if e.cursor is not None)
                self._commit_cursors()
            now = time.monotonic()
            if now - last_tick >= self.config.tick_s:
                found.extend(self.engine.tick())
                last_tick = now
            if now - last_checkpoint >= self.config.checkpoint_s:
                self._checkpoint()
                last_checkpoint = now
            if now - last_rescan >= self.config.rescan_s:
                self.refresh_upstreams()
                last_rescan = now
            for finding in found:
                with self._lock:
                    self.findings.append(finding)
                if self.on_finding is not None:
                    self.on_finding(finding)
            if self._stop.is_set() and not batch:
                break

    def _commit_cursors(self) -> None:
        """Commit the processed batches' cursors; when the store cannot write (disk full, read-only),
        keep them and try again with the next batch: the engine keeps watching meanwhile, and a
        restart before then re-reads those lines (at-least-once), never skips them."""
        if not self._pending_cursors:
            return
        try:
            self.store.set_cursors(self._pending_cursors, self.clock.now())
        except StoreError as exc:
            self._store_failure("cursors", exc)
            return
        self._pending_cursors = {}

    def _checkpoint(self) -> None:
        """Persist engine state; a failed checkpoint is counted by the store and retried at the next one."""
        try:
            self.engine.checkpoint()
        except StoreError as exc:
            self._store_failure("checkpoint", exc)

    def _store_failure(self, what: str, exc: StoreError) -> None:
        now = time.monotonic()
        if now - self._last_store_warning >= 60.0:  # once a minute: a full disk must not also fill the log
            self._last_store_warning = now
            fields = {"what": what, "error": str(exc)}
            log.warning("store write failed; watching on, retrying", extra={"fields": fields})

    def request_reload(self, rules: RuleSet | Sequence[RulePack]) -> None:
        """Swap in a new rule set, whole: done by the engine thread between batches. Compile
        first (packs that do not compile raise :class:`RulePackError` here, in the caller's
        thread, and the running rule set stays)."""
        self._reload = self._compiled(rules)

    def _swap_engine(self, ruleset: RuleSet) -> None:
        """The engine and the Prometheus queries change in one step, on the engine thread."""
        self._reload = None
        self._checkpoint()  # rules that survive the reload keep their state
        upstreams, balancers, stats = self.engine.upstreams, self.engine.load_balancers, self.engine.stats
        self.engine = Engine(
            ruleset, self.clock, store=self.store, upstreams=upstreams, load_balancers=self.load_balancers
        )
        self.engine.load_balancers = balancers  # with the containers marked since the start
        self.engine.stats = stats  # the lines/samples counters go on counting across a reload
        self.ruleset = ruleset
        if self.prometheus is not None:
            self.prometheus.set_queries(self._prometheus_queries(ruleset))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        return {
            "sources": [s.status() for s in self.sources],
            "queue": self.queue.stats(),
            "lines": self.engine.stats.lines,
            "findings": dict(self.engine.stats.findings),
        }

    def wait_for(self, predicate: Callable[[Finding], bool], timeout_s: float) -> Finding:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for f in self.findings:
                    if predicate(f):
                        return f
            time.sleep(0.1)
        with self._lock:
            seen = [(f.rule_id, f.target.container) for f in self.findings]
        raise TimeoutError(f"no matching finding within {timeout_s}s; saw {seen}")
