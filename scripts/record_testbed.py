#!/usr/bin/env python3
"""Record a testbed scenario as the watcher's live sources see it, with the ground truth.

One JSON object per line (gzip when the output ends in ``.gz``), the replay format of
``watcher.replay`` plus one header line that says what really happened::

    {"type": "meta", "scenario": "leak-4mb", "failures": [{"target": "tfsim-..-1", "ts": ..., "kind": "oom"}],
     "faults": [{"target": ..., "ts": ..., "faults": {...}}], "healthy": [[start, end], ...], ...}
    {"type": "log", "ts": ..., "target": ..., "engine": "local", "service": ..., "message": "..."}
    {"type": "lifecycle", "ts": ..., "target": ..., "kind": "die", "exit_code": 137}
    {"type": "sample", "ts": ..., "target": ..., "series": "memory_working_set_bytes", "value": ...}

Signals:

* log lines and lifecycle events come from the watcher's own ``DockerLogsSource`` and
  ``DockerEventsSource`` (selected by this run's testbed label), so they carry what a live watcher
  would get, Docker's timestamps included;
* ``memory_working_set_bytes`` / ``memory_limit_bytes`` per replica every second from the
  simulator's admin ``/status`` (``rss_bytes``, ``memory_limit_bytes``);
* ``error_ratio`` and ``latency_p99_seconds`` per replica every 5 s from the load generator's
  completed requests (attributed by the ``X-Upstream`` header Nginx adds), as a Prometheus query
  over the client's view would give them.

Ground truth: ``failures`` are Docker's ``oom`` events (kind ``oom``), other non-zero ``die``
events (``crash``) and ``health_status: unhealthy`` (``unhealthy``); for scenarios whose fault
never kills the container (error ramp, latency creep) the first 5 s window in which the client
saw the service-level objective broken (error ratio >= 0.2, p99 >= 1 s) counts as an
``unhealthy`` failure with ``"source": "slo"``. ``healthy`` lists the stretches in which no
replica had a fault (from the start of the recording to the first injection, or the whole
recording for the healthy scenario).

Usage (needs Docker; everything binds 127.0.0.1, host networking, no Docker networks)::

    .venv/bin/python scripts/record_testbed.py leak-4mb recordings/leak-4mb.jsonl.gz
    .venv/bin/python scripts/record_testbed.py --all recordings/
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from testbed.loadgen import LoadGenerator, RequestRecord, percentile
from testbed.replicas import TESTBED_LABEL, Replica
from testbed.stack import MODELS_DIR, Testbed, TestbedConfig
from watcher.inventory import Inventory, LabelNames, make_clients
from watcher.model import Lifecycle, LifecycleKind, LogRecord, Sample, Signal, Target
from watcher.sources.base import SignalQueue
from watcher.sources.docker_events import DockerEventsSource
from watcher.sources.docker_logs import DockerLogsSource
from watcher.store import Store

RATE_PER_S = 10.0
WINDOW_S = 5.0  # error_ratio / latency_p99_seconds resolution
SLO_ERROR_RATIO = 0.2
SLO_P99_S = 1.0


@dataclass(frozen=True)
class Scenario:
    name: str
    describe: str
    memory_limit: str
    warmup_s: float  # healthy traffic before the fault (change detectors need ~20 windows of baseline)
    after_s: float  # how long to keep recording after the fault was injected
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)  # on replica 1 (all replicas for noise)
    all_replicas: bool = False
    stop_after_failure_s: float | None = None  # end early this long after the first failure


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "leak-4mb",
            "replica 1 leaks 4 MB/s towards its 160 MiB limit, until the kernel OOM-kills it",
            "160m",
            warmup_s=40,
            after_s=90,
            faults={"leak": {"mb_per_s": 4}},
            stop_after_failure_s=20,
        ),
        Scenario(
            "leak-8mb",
            "replica 1 leaks 8 MB/s towards its 160 MiB limit, until the kernel OOM-kills it",
            "160m",
            warmup_s=40,
            after_s=60,
            faults={"leak": {"mb_per_s": 8}},
            stop_after_failure_s=20,
        ),
        Scenario(
            "error-ramp",
            "replica 1 answers a rising share of 500s, 0 -> 60 % over 60 s",
            "192m",
            warmup_s=110,
            after_s=75,
            faults={"error_ramp": {"start": 0.0, "end": 0.6, "over_s": 60}},
        ),
        Scenario(
            "latency-creep",
            "replica 1's latency creeps from 0 to 1500 ms over 90 s",
            "192m",
            warmup_s=110,
            after_s=100,
            faults={"latency_creep": {"start_ms": 0, "end_ms": 1500, "over_s": 90}},
        ),
        Scenario(
            "healthy-noise",
            "both replicas healthy, logging 5 routine lines a second each",
            "192m",
            warmup_s=0,
            after_s=240,
            faults={"noise": {"lines_per_s": 5}},
            all_replicas=True,
        ),
    )
}


def signal_to_json(signal: Signal) -> dict[str, Any]:
    """The replay format (``watcher.replay.signal_from_json`` reads it back)."""
    out: dict[str, Any] = {"ts": round(signal.ts, 6)}
    target: Target | None = signal.target
    if target is not None:
        out.update(target=target.container, engine=target.engine)
        if target.service:
            out["service"] = target.service
    if isinstance(signal, LogRecord):
        out.update(type="log", message=signal.message)
    elif isinstance(signal, Lifecycle):
        out.update(type="lifecycle", kind=signal.kind.value)
        if signal.exit_code is not None:
            out["exit_code"] = signal.exit_code
        if signal.health is not None:
            out["health"] = signal.health
    else:
        out.update(type="sample", series=signal.series, value=signal.value)
    return {"type": out.pop("type"), **out}


class Collector:
    """Thread-safe bag of recorded signals."""

    def __init__(self) -> None:
        self.signals: list[Signal] = []
        self._lock = threading.Lock()

    def add(self, signal: Signal) -> None:
        with self._lock:
            self.signals.append(signal)

    def snapshot(self) -> list[Signal]:
        with self._lock:
            return list(self.signals)


@contextmanager
def watcher_sources(run_id: str, collector: Collector, workdir: Path) -> Iterator[None]:
    """The live log and event sources on this run's containers, drained into the collector."""
    queue = SignalQueue()
    store = Store(workdir / "record.db")
    selector = [f"{TESTBED_LABEL}={run_id}"]
    inventory = Inventory(make_clients(None), LabelNames(tuple(selector)), rescan_s=1.0)  # one events stream
    sources = [
        DockerLogsSource(queue, store, backfill_s=None, inventory=inventory),
        DockerEventsSource(queue, store, max_replay_s=60.0, inventory=inventory),
    ]
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set() or queue.depth:
            for env in queue.get_batch(512, timeout_s=0.2):
                collector.add(env.signal)

    thread = threading.Thread(target=drain, name="record-drain", daemon=True)
    thread.start()
    for s in sources:
        s.start()
    inventory.start()
    try:
        yield
    finally:
        time.sleep(1.5)  # the last lines and events are in flight
        inventory.stop()
        for s in sources:
            s.stop()
        stop.set()
        thread.join(timeout=10)


def poll_memory(replicas: list[Replica], collector: Collector, stop: threading.Event) -> None:
    """memory_working_set_bytes / memory_limit_bytes per replica, every second, from /status."""
    http = requests.Session()
    http.trust_env = False
    next_t = time.time()
    while not stop.is_set():
        for r in replicas:
            try:
                doc = http.get(f"{r.admin_url}/status", timeout=0.5).json()
            except (requests.RequestException, ValueError):
                continue  # down (OOM-killed, restarting): no sample, as a stats read would fail
            ts = time.time()
            target = Target(container=r.name, service=r.spec.labels.get("watcher.service"))
            rss, limit = doc.get("rss_bytes"), doc.get("memory_limit_bytes")
            if rss:
                collector.add(Sample("memory_working_set_bytes", ts, float(rss), target))
            if limit:
                collector.add(Sample("memory_limit_bytes", ts, float(limit), target))
        next_t += 1.0
        stop.wait(max(0.0, next_t - time.time()))


def client_windows(
    records: list[RequestRecord], t0_wall: float, replicas: list[Replica]
) -> list[tuple[str, float, float, float, int]]:
    """(replica, window end ts, error ratio, p99 seconds, n) per replica and 5 s window."""
    by_address = {r.address: r.name for r in replicas}
    buckets: dict[tuple[str, int], list[RequestRecord]] = {}
    for rec in records:
        name = by_address.get(rec.final_upstream or "")
        if name is None:
            continue
        end = rec.started_s + rec.latency_ms / 1000.0
        buckets.setdefault((name, int(end // WINDOW_S)), []).append(rec)
    out = []
    for (name, k), recs in sorted(buckets.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ratio = sum(1 for r in recs if not r.ok) / len(recs)
        p99 = percentile([r.latency_ms for r in recs], 99) / 1000.0
        out.append((name, t0_wall + (k + 1) * WINDOW_S, ratio, p99, len(recs)))
    return out


def failures_from(signals: list[Signal], t_begin: float) -> list[dict[str, Any]]:
    """Docker's account: oom (the die 137 that follows is the same failure), crash, unhealthy."""
    failures: list[dict[str, Any]] = []
    last_oom: dict[str, float] = {}
    for s in sorted((s for s in signals if isinstance(s, Lifecycle)), key=lambda s: s.ts):
        if s.ts < t_begin:
            continue
        name = s.target.container
        if s.kind is LifecycleKind.OOM:
            last_oom[name] = s.ts
            failures.append({"target": name, "ts": s.ts, "kind": "oom", "source": "docker"})
        elif s.kind is LifecycleKind.DIE and s.exit_code not in (None, 0):
            if s.ts - last_oom.get(name, -math.inf) > 5.0:
                failures.append({"target": name, "ts": s.ts, "kind": "crash", "source": "docker"})
        elif s.kind is LifecycleKind.HEALTH_STATUS and s.health == "unhealthy":
            failures.append({"target": name, "ts": s.ts, "kind": "unhealthy", "source": "docker"})
    return failures


def record(scenario: Scenario, out: Path, rate_per_s: float = RATE_PER_S, replicas: int = 2) -> dict[str, Any]:
    smoke = json.loads((MODELS_DIR / "half_plus_two" / "2" / "smoke.json").read_text())
    cfg = TestbedConfig(
        replicas=replicas,
        weights=(1,) * replicas,
        memory_limit=scenario.memory_limit,
        with_alertmanager=False,
        health_interval_s=2.0,
    )
    collector = Collector()
    faults: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="watcher-record-") as tmp, Testbed(cfg) as bed:
        t_begin = time.time()
        members = list(bed.replicas)
        with watcher_sources(bed.run_id, collector, Path(tmp)):
            stop = threading.Event()
            mem = threading.Thread(target=poll_memory, args=(bed.replicas, collector, stop), daemon=True)
            mem.start()
            total = scenario.warmup_s + scenario.after_s
            gen = LoadGenerator(
                bed.url,
                "half_plus_two",
                rate_per_s=rate_per_s,
                duration_s=total,
                timeout_s=5.0,
                instances=smoke["instances"],
                expected={"2": smoke["predictions"]},
            ).start()
            t0 = time.monotonic()
            injected_at: float | None = None
            sick = bed.replicas if scenario.all_replicas else [bed.replicas[1]]
            if scenario.warmup_s <= 0:
                for r in sick:
                    r.set_faults(scenario.faults)
                    faults.append({"target": r.name, "ts": time.time(), "faults": scenario.faults})
                injected_at = time.time()
            first_failure: float | None = None
            while not gen._done.wait(0.5):
                if injected_at is None and time.monotonic() - t0 >= scenario.warmup_s:
                    injected_at = time.time()
                    for r in sick:
                        r.set_faults(scenario.faults)
                        faults.append({"target": r.name, "ts": injected_at, "faults": scenario.faults})
                if scenario.stop_after_failure_s is not None:
                    if first_failure is None:
                        found = failures_from(collector.snapshot(), t_begin)
                        first_failure = found[0]["ts"] if found else None
                    elif time.time() - first_failure >= scenario.stop_after_failure_s:
                        gen.stop()
            load = gen.result()
            stop.set()
            mem.join(timeout=5)
        t_end = time.time()
    signals = [s for s in collector.snapshot() if s.ts >= t_begin - 1.0]
    failures = failures_from(signals, t_begin)
    windows = client_windows(load.records, load.t0_wall, members)
    sick_names = {f["target"] for f in faults}
    slo_failed: set[str] = {f["target"] for f in failures}
    for name, ts, ratio, p99, n in windows:
        target = Target(container=name, service=cfg.model)
        signals.append(Sample("error_ratio", ts, ratio, target))
        signals.append(Sample("latency_p99_seconds", ts, p99, target))
        breached = n >= 5 and (ratio >= SLO_ERROR_RATIO or p99 >= SLO_P99_S)
        if breached and name in sick_names and name not in slo_failed and not scenario.all_replicas:
            slo_failed.add(name)
            failures.append({"target": name, "ts": ts, "kind": "unhealthy", "source": "slo"})
    signals.sort(key=lambda s: s.ts)
    failures.sort(key=lambda f: f["ts"])
    healthy_end = t_end if scenario.all_replicas and "noise" in scenario.faults else injected_at or t_end
    meta = {
        "type": "meta",
        "scenario": scenario.name,
        "describe": scenario.describe,
        "recorded_at": round(t_begin, 3),
        "replicas": [r.name for r in members],
        "memory_limit": scenario.memory_limit,
        "rate_per_s": rate_per_s,
        "failures": failures,
        "faults": faults,
        "healthy": [[round(t_begin, 3), round(healthy_end, 3)]],
        "client": {"requests": load.requests, "failed": load.failed, "statuses": load.status_counts},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    opener: Any = gzip.open if out.suffix == ".gz" else open
    with opener(out, "wt", encoding="utf-8") as f:
        fh: IO[str] = f
        fh.write(json.dumps(meta) + "\n")
        for s in signals:
            fh.write(json.dumps(signal_to_json(s), separators=(",", ":")) + "\n")
    return {"scenario": scenario.name, "signals": len(signals), "failures": failures, "bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", choices=sorted(SCENARIOS), help="what to record")
    parser.add_argument("out", type=Path, help="output file (.jsonl or .jsonl.gz), or a directory with --all")
    parser.add_argument("--all", action="store_true", help="record every scenario into OUT/<name>.jsonl.gz")
    parser.add_argument("--rate", type=float, default=RATE_PER_S, help="requests per second through Nginx")
    args = parser.parse_args(argv)
    if args.all:
        jobs = [(SCENARIOS[n], args.out / f"{n}.jsonl.gz") for n in sorted(SCENARIOS)]
    elif args.scenario:
        jobs = [(SCENARIOS[args.scenario], args.out)]
    else:
        parser.error("name a scenario or pass --all")
    for scenario, path in jobs:
        print(f"recording {scenario.name}: {scenario.describe}", file=sys.stderr)
        summary = record(scenario, path, rate_per_s=args.rate)
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
