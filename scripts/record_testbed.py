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

* log lines and lifecycle events are what ``watcher record`` reads after the run (``watcher.record``:
  Docker's API, the containers selected by this run's testbed label, Docker's own timestamps), so
  they are what a live watcher got;
* ``memory_working_set_bytes`` / ``memory_limit_bytes`` per replica every second from the
  simulator's admin ``/status`` (``rss_bytes``, ``memory_limit_bytes``);
* ``error_ratio`` and ``latency_p99_seconds`` per replica every 5 s from the load generator's
  completed requests (attributed by the ``X-Upstream`` header Nginx adds), as a Prometheus query
  over the client's view would give them.

Ground truth: ``failures`` are Docker's account as ``watcher record`` writes it (``oom`` events,
other non-zero ``die`` events as ``crash``, ``health_status: unhealthy``); for scenarios whose fault
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
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from testbed.loadgen import LoadGenerator, RequestRecord, percentile
from testbed.replicas import TESTBED_LABEL, Replica
from testbed.stack import MODELS_DIR, Testbed, TestbedConfig
from watcher.inventory import LabelNames, make_clients
from watcher.model import Sample, Signal, Target
from watcher.record import RecordSources, collect, engine_events, failures_from, write_recording

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
    with Testbed(cfg) as bed:
        t_begin = time.time()
        members = list(bed.replicas)
        docker_client = make_clients(None)
        labels = LabelNames((f"{TESTBED_LABEL}={bed.run_id}",))
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
                    events = engine_events(docker_client["local"], "local", labels, t_begin, time.time())
                    found = failures_from(list(events), t_begin)
                    first_failure = found[0]["ts"] if found else None
                elif time.time() - first_failure >= scenario.stop_after_failure_s:
                    gen.stop()
        load = gen.result()
        stop.set()
        mem.join(timeout=5)
        time.sleep(1.5)  # the last lines and events reach Docker's log and event store
        t_end = time.time()
        # logs and events as `watcher record` reads them, before the testbed removes the containers
        docker_part = collect(RecordSources(labels=labels), t_begin - 1.0, t_end, clients=docker_client)
    signals = docker_part.signals + [s for s in collector.snapshot() if s.ts >= t_begin - 1.0]
    failures = list(docker_part.meta["failures"])
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
    write_recording(out, meta, signals)
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
