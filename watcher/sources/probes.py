"""Active probes: every running replica's own status call, on a short period, as Samples.

A replica that stops answering (process alive, requests hang) writes no log line and its container
stays "running": without probes the watcher hears of it only through the client requests that
already timed out at the proxy. A probe asks the replica itself, with a timeout well below the
proxy's, so two unanswered probes in a row (the shipped rule's corroboration: one slow answer on a
busy replica is not an incident) say "hung" a second or so after it starts. The second is sent the
moment the first fails, not at the next turn, so the corroboration costs one timeout, not a period.

Cost is bounded by construction: each replica has at most one probe in flight (a replica whose
probe has not returned by its next turn is skipped, so a hung replica gets at most one request per
period), probes start at most once per ``interval_s`` per replica (plus one confirming probe per
run of failures), and they run on a fixed pool of
``workers`` threads. Only running containers with an upstream address and a model are probed (the
inventory's snapshot: no Docker call here), never stopped ones, never the load balancer.

The HTTP call is a seam (:data:`HealthCall`): TF Serving's ``GET /v1/models/<model>`` by default;
another protocol's status/ready call replaces it without touching the scheduling.

Series per replica: ``probe_ok`` (1 answered and available, 0 not), ``probe_latency_seconds`` (the
probe's duration; the timeout when it timed out) and ``probe_consecutive_failures`` (0 after a
good probe), which is what the rule counts. Failures count only once the replica has answered
since its last start: a replica loading its model after a (re)start is not hung.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from watcher.actions.protocols import ADAPTERS, DEFAULT_PROTOCOL, ServingProtocol
from watcher.fleet import replica_of
from watcher.inventory import DEFAULT_SELECTOR, Inventory, WatchedContainer, shared_or_own
from watcher.model import Sample
from watcher.sources.base import Envelope, SignalQueue, Source

SERIES: Final = ("probe_ok", "probe_latency_seconds", "probe_consecutive_failures")


class ProbeFailed(Exception):
    """The replica answered, but not as a healthy replica does (an error status, a model not AVAILABLE)."""


HealthCall = Callable[[str, str, float], None]
"""``(upstream "host:port", model, timeout_s)``: returns when the replica is healthy; raises
:class:`ProbeFailed`, ``TimeoutError`` or ``OSError`` when it is not. The per-protocol seam."""


class TFServingStatus:
    """TF Serving REST ``GET /v1/models/<model>``: healthy when 200 with at least one version AVAILABLE.

    One kept-alive connection per replica (its probes never overlap, so one thread uses it at a
    time): a probe costs one request, not a TCP handshake and a thread's worth of socket setup,
    which is most of its CPU. Any failure closes the connection; the next probe opens a new one,
    so a hung replica's connection is never reused."""

    def __init__(self) -> None:
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self._lock = threading.Lock()

    def __call__(self, upstream: str, model: str, timeout_s: float) -> None:
        with self._lock:
            conn = self._conns.pop(upstream, None)
        if conn is None:
            host, _, port = upstream.rpartition(":")
            conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=timeout_s)
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        try:
            conn.request("GET", f"/v1/models/{model}")
            reply = conn.getresponse()
            body = reply.read(64 * 1024)
        except BaseException:
            conn.close()
            raise
        if reply.will_close:
            conn.close()
        else:
            with self._lock:
                self._conns[upstream] = conn
        if reply.status != 200:
            raise ProbeFailed(f"HTTP {reply.status}")
        try:
            versions = json.loads(body).get("model_version_status") or []
        except (ValueError, AttributeError):
            raise ProbeFailed("status reply is not JSON") from None
        if not any(isinstance(v, dict) and v.get("state") == "AVAILABLE" for v in versions):
            raise ProbeFailed("no version AVAILABLE")

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()


def tfserving_status(upstream: str, model: str, timeout_s: float) -> None:
    """One TF Serving status probe on a fresh connection (for one-off checks and tests)."""
    TFServingStatus()(upstream, model, timeout_s)


class ProbesSource(Source):
    """Every ``interval_s``, one status call per running replica (one in flight each) into Samples."""

    name = "probes"

    def __init__(
        self,
        queue: SignalQueue,
        engines: Mapping[str, Any] | None = None,
        label_selector: Sequence[str] = DEFAULT_SELECTOR,
        service_label: str = "watcher.service",
        interval_s: float = 0.5,
        timeout_s: float = 0.3,
        workers: int = 16,
        inventory: Inventory | None = None,
        call: HealthCall | None = None,
    ) -> None:
        """``inventory``: the watcher's shared one (its snapshot says which replicas run and where they
        listen); without it (``engines``, ``label_selector``, ``service_label``) a private one."""
        super().__init__(queue)
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("probe interval and timeout must be positive")
        self.inventory, self._owns_inventory = shared_or_own(inventory, engines, label_selector, service_label)
        self.interval_s = interval_s
        self.timeout_s = timeout_s  # longer than interval_s: a slow replica's turns are skipped, not stacked
        self.workers = workers
        self.call: HealthCall = call if call is not None else TFServingStatus()
        # every protocol's adapter, for replicas that are not TF Serving (its call above is the fast path)
        self._adapters: dict[str, ServingProtocol] = {name: cls(timeout_s=timeout_s) for name, cls in ADAPTERS.items()}
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._inflight: set[str] = set()
        self._failures: dict[str, int] = {}
        self._answered: dict[str, str] = {}  # key -> the start (started_at) since which it has answered
        self.sent = 0  # probes started
        self.skipped = 0  # turns skipped because the replica's previous probe was still out
        self.confirms = 0  # probes sent at once after a first failure (counted in sent too)
        self.rounds = 0
        self.unprobed: list[str] = []  # running replicas without an upstream address or model label

    def start(self) -> None:
        if not self._claim_start():
            return
        if self._owns_inventory:
            self.inventory.start()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="probe")
        self._thread = threading.Thread(target=self._run, name="probes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        super().stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # a probe ends within its timeout
            self._pool = None
        close = getattr(self.call, "close", None)
        if callable(close):
            close()  # the kept-alive connections
        if self._owns_inventory:
            self.inventory.stop()
        self.connected = False

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stopping:
            self.probe_round()
            next_at += self.interval_s
            now = time.monotonic()
            if next_at < now:  # fell behind (a suspended host): do not burst to catch up
                next_at = now + self.interval_s
            self._stop.wait(next_at - now)

    def probe_round(self) -> int:
        """Start a probe for each probeable replica whose last one has returned; returns how many."""
        pool = self._pool
        if pool is None:
            return 0
        states = self.inventory.engine_states()
        self.connected = all(state.listed for state in states.values())
        started = 0
        running = [c for c in self.inventory.snapshot().running() if not c.load_balancer]
        probeable = [c for c in running if c.upstream and c.model and (c.protocol or DEFAULT_PROTOCOL) in ADAPTERS]
        # named in /status: a replica without its labels (or with a protocol no adapter speaks) is not
        # watched this way, and should be seen not to be
        self.unprobed = sorted(c.name for c in running if c not in probeable)
        with self._lock:  # a replica gone from the inventory takes its failure count with it
            keys = {c.key for c in probeable}
            self._failures = {k: n for k, n in self._failures.items() if k in keys}
            self._answered = {k: v for k, v in self._answered.items() if k in keys}
        for container in probeable:
            with self._lock:
                if container.key in self._inflight:
                    self.skipped += 1
                    continue
                self._inflight.add(container.key)
            if not self._submit(container):
                break
            started += 1
        with self._lock:
            self.sent += started
        self.rounds += 1
        return started

    def _probe(self, container: WatchedContainer) -> None:
        """One probe; its three samples go to the queue (never blocking: a full queue drops them)."""
        key = container.key
        assert container.upstream is not None and container.model is not None
        t0 = time.monotonic()
        error: str | None = None
        try:
            if (container.protocol or DEFAULT_PROTOCOL) == DEFAULT_PROTOCOL:
                self.call(container.upstream, container.model, self.timeout_s)
            else:
                self._ready(container)
        except TimeoutError:
            error = f"timed out after {self.timeout_s:g}s"
        except (ProbeFailed, OSError, http.client.HTTPException, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        elapsed = min(time.monotonic() - t0, self.timeout_s) if error else time.monotonic() - t0
        with self._lock:
            if error is None:
                self._answered[key] = container.started_at
            # a replica that has not answered since it (re)started is loading its model, not hung:
            # its failures count only once it has served (a replica that never comes up is the
            # load-failure and health rules' to find)
            counts = self._answered.get(key) == container.started_at
            failures = self._failures[key] = self._failures.get(key, 0) + 1 if error and counts else 0
            # the first failure is confirmed at once rather than at the next turn: the hang is then
            # found two timeouts after the first failed probe started, not a period and a timeout.
            # The replica stays in flight, so its scheduled turns skip meanwhile (still one at a time)
            confirm = failures == 1 and not self.stopping
            if confirm:
                self.confirms += 1
                self.sent += 1
            else:
                self._inflight.discard(key)
        if error is not None:
            self._error(f"{container.name} ({container.upstream}): {error}")
        ts = time.time()
        labels = {"name": container.name, "engine": container.engine, "upstream": container.upstream}
        values = (("probe_ok", 0.0 if error else 1.0), ("probe_latency_seconds", elapsed))
        self.queue.put_many(
            Envelope(Sample(series=series, ts=ts, value=value, target=container.target, labels=labels), f"probes:{key}")
            for series, value in (*values, ("probe_consecutive_failures", float(failures)))
        )
        if confirm:
            self._submit(container)

    def _submit(self, container: WatchedContainer) -> bool:
        """Start a probe of a replica already marked in flight; False (and unmarked) once stopping."""
        pool = self._pool
        try:
            if pool is None:
                raise RuntimeError("stopped")
            pool.submit(self._probe, container)
        except RuntimeError:  # the pool is shutting down
            with self._lock:
                self._inflight.discard(container.key)
            return False
        return True

    def _ready(self, container: WatchedContainer) -> None:
        """Another protocol's readiness call (its adapter's ``ready``: V2 ``/v2/models/<m>/ready``,
        KServe V1, TorchServe ``/ping``), so a server that is not TF Serving is never taken for hung."""
        replica = replica_of(container)
        assert replica is not None  # probeable: it has an upstream and a model
        adapter = self._adapters[container.protocol or DEFAULT_PROTOCOL]
        check = adapter.ready(replica)
        if not check:
            raise ProbeFailed(check.why)

    def status(self) -> dict[str, Any]:
        with self._lock:
            failing = sorted(k for k, n in self._failures.items() if n)
            inflight = len(self._inflight)
        return {
            **super().status(),
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "sent": self.sent,
            "skipped": self.skipped,
            "confirms": self.confirms,
            "in_flight": inflight,
            "failing": failing,
            "unprobed": list(self.unprobed),
        }
