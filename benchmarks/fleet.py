"""What one watcher costs, and how fast it drains, watching a fleet over several Docker engines (issue #18).

For each fleet size (12, 24 and 48 replicas by default) in one run: the multi-engine testbed
(``TestbedConfig.engines``: the shared engine plus ``engines - 1`` of its own, replicas spread
round-robin, one Nginx upstream in front of all, Prometheus scraping all at the shipped 5 s), every
replica printing TF-Serving-style noise lines (20 lines/s each by default) and serving a client
load through Nginx (1 request/s per replica: one access-log line each), and the watcher **as users
run it** (:class:`testbed.deployed.DeployedWatcher`: ``watcher run --config deploy/watcher.yaml``,
one socket proxy per engine as each host runs its own). Then:

* a steady window (``--measure-s``): the watcher process's CPU share of one core and the socket
  proxies' (``/proc/<pid>/stat``), its RSS and peak RSS (``/proc/<pid>/status``), the log lines it
  processed per second and the signals it dropped (its own ``/metrics``, as Prometheus reads them),
  beside the lines the fleet wrote, and the findings it fired meanwhile by rule (no fault is
  injected yet: each one is a false alarm at this fleet size);
* failures, one replica per engine per round, one at a time (each incident ends before the next
  fault: the shipped ``max_unavailable: 1`` would otherwise hold the second one back, which is the
  rail working, not latency): the replica logs TF Serving's fatal ``Check failed:`` line and aborts.
  Latency = the drain step's end in ``watcher incidents --json`` (the Nginx shifter ends it only
  once the reload is confirmed live) minus the time Docker stamped on that line as the replica
  wrote it.

It prints each figure per size and as a ratio to the smallest size beside the fleet's own ratio
(linear or better means the figure's ratio is at most the fleet's). ``--quick`` (2 engines,
4 replicas, short windows) is what CI runs (``tests/integration/test_fleet_benchmark.py``).

    python -m benchmarks.fleet                              # 12, 24, 48 replicas over 3 engines
    python -m benchmarks.fleet --sizes 48 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.procstat import cpu_seconds, machine, status_kb
from testbed.deployed import DeployedWatcher
from testbed.harness import HarnessSpec
from testbed.loadgen import LoadGenerator, percentile
from testbed.replicas import Replica
from testbed.stack import Testbed, TestbedConfig

FAILURE_LINE = "Check failed: "  # what the simulator's crash fault logs (glog F) before it aborts
SETTLE_S = 10.0  # after every replica is followed: backfill read, first Prometheus and stats rounds


@dataclass
class Sample:
    at: float
    watcher_cpu_s: float
    proxies_cpu_s: float
    lines: float
    dropped: float
    findings: dict[str, float] = field(default_factory=dict)  # rule -> findings fired so far


@dataclass
class Failure:
    target: str
    line_at: float  # Docker's timestamp of the failure line
    drained_at: float | None  # the drain step's end (confirmed at Nginx), None: not drained in time
    rule: str | None
    opened_at: float | None = None  # the incident opened: the finding reached the policy
    drain_started_at: float | None = None  # the drain step began (after the rails said yes)

    @property
    def latency_s(self) -> float | None:
        return None if self.drained_at is None else round(self.drained_at - self.line_at, 3)


@dataclass
class SizeResult:
    replicas: int
    engines: int
    measure_s: float
    lines_written_per_s: float
    lines_processed_per_s: float
    dropped: int
    watcher_cpu_pct: float
    proxies_cpu_pct: float
    rss_mb: float
    hwm_mb: float
    failures: list[dict[str, Any]] = field(default_factory=list)
    latency_median_s: float | None = None
    latency_p99_s: float | None = None
    latency_max_s: float | None = None
    not_drained: int = 0
    steady_findings: dict[str, int] = field(default_factory=dict)  # rule -> findings in the window (no fault)


def _metrics(w: DeployedWatcher) -> dict[str, float]:
    """Every series summed over its labels, and ``watcher_findings_total`` also by rule
    (``findings/<rule>``): the findings a healthy fleet should not have."""
    text = w.http.get(f"http://127.0.0.1:{w.api_port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
            if s.name == "watcher_findings_total":
                key = f"findings/{s.labels.get('rule', '')}"
                out[key] = out.get(key, 0.0) + s.value
    return out


def _sample(w: DeployedWatcher) -> Sample:
    assert w.proc is not None
    m = _metrics(w)
    return Sample(
        at=time.monotonic(),
        watcher_cpu_s=cpu_seconds(w.proc.pid),
        proxies_cpu_s=sum(cpu_seconds(p.pid) for p in w.proxies.values()),
        lines=m.get("watcher_lines_total", 0.0),
        dropped=m.get("watcher_dropped_signals_total", 0.0),
        findings={k.removeprefix("findings/"): v for k, v in m.items() if k.startswith("findings/")},
    )


def _status(w: DeployedWatcher) -> dict[str, Any]:
    token = w.env["WATCHER_API_TOKEN"]
    reply = w.http.get(
        f"http://127.0.0.1:{w.api_port}/status", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    reply.raise_for_status()
    result: dict[str, Any] = reply.json()
    return result


def wait_following(w: DeployedWatcher, bed: Testbed, timeout_s: float) -> None:
    """Until the watcher has a target for every replica on its engine (each has been read from)."""
    want = {r.key for r in bed.replicas}
    deadline = time.monotonic() + timeout_s
    missing = want
    while time.monotonic() < deadline:
        missing = want - set(_status(w)["targets"])
        if not missing:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the watcher follows no signal of {len(missing)} replicas: {sorted(missing)[:5]}")


def _line_time(replica: Replica, since: float, timeout_s: float = 10.0) -> float:
    """When Docker stamped the replica's failure line (its log survives the restart that follows)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        raw: bytes = replica.container.logs(timestamps=True, since=int(since) - 1)
        for line in raw.decode("utf-8", errors="replace").splitlines():
            stamp, _, text = line.partition(" ")
            if FAILURE_LINE in text:
                # RFC 3339 with nanoseconds: keep microseconds for datetime
                whole, _, frac = stamp.rstrip("Z").partition(".")
                return datetime.fromisoformat(f"{whole}.{(frac + '000000')[:6]}+00:00").timestamp()
        time.sleep(0.2)
    raise TimeoutError(f"{replica.name} logged no {FAILURE_LINE!r} line")


def _drained(w: DeployedWatcher, target: str, line_at: float, after: float) -> Failure | None:
    """The failure's drain, once done, with when the incident opened and the drain began (what the
    latency splits into: detection, the rails' decision, the shift at the load balancer)."""
    for incident in w.incidents():
        if incident["target"] != target or incident["opened"] < after:
            continue
        for step in incident["steps"]:
            if step["name"] == "drain" and step["status"] == "done" and step["ended"] is not None:
                started = float(step["started"]) if step.get("started") is not None else None
                rule = str(incident["rule"])
                return Failure(target, line_at, float(step["ended"]), rule, float(incident["opened"]), started)
    return None


def fail_one(w: DeployedWatcher, replica: Replica, timeout_s: float) -> Failure:
    target = replica.key
    w.wait_idle(timeout_s=120)
    injected = time.time()
    replica.set_faults({"crash": {"after_s": 0}})
    line_at = _line_time(replica, injected)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (failure := _drained(w, target, line_at, injected - 1)) is not None:
            return failure
        time.sleep(0.5)
    return Failure(target, line_at, None, None)


def _profiler(w: DeployedWatcher, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (a developer's tool, not a dependency: ``pip install py-spy``) sampling the watcher's
    every thread for the window, as collapsed stacks (``flamegraph.pl`` or speedscope read them)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    assert w.proc is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "--format", "raw", "--nonblocking", "--threads", "--gil", "-r", "100"]
    cmd += ["-d", str(int(seconds)), "-o", str(out), "-p", str(w.proc.pid)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_size(
    replicas: int,
    engines: int,
    lines_per_s: float,
    client_rate_per_replica: float,
    measure_s: float,
    rounds: int,
    workdir: Path,
    profile: Path | None = None,
) -> SizeResult:
    cfg = TestbedConfig(
        replicas=replicas,
        weights=(1,) * replicas,
        engines=engines,
        noise_lines_per_s=lines_per_s,
        scrape_interval_s=5.0,  # the shipped Prometheus interval (deploy/prometheus.yml)
        health_interval_s=10.0,  # 48 curl execs every 2 s would cost more than the watcher measured
        memory_limit="192m",
    )
    with Testbed(cfg) as bed:
        spec = HarnessSpec.for_testbed(bed, workdir / f"watcher-{replicas}.db")
        with DeployedWatcher(spec, workdir / f"watcher-{replicas}") as w:
            wait_following(w, bed, timeout_s=120)
            client_rate = client_rate_per_replica * replicas
            fail_budget_s = rounds * engines * 90.0
            gen = LoadGenerator(bed.url, cfg.model, client_rate, measure_s + SETTLE_S + fail_budget_s, 5.0, [1.0])
            gen.start()
            try:
                time.sleep(SETTLE_S)
                first = _sample(w)
                spy = _profiler(w, profile / f"fleet-{replicas}.txt", measure_s) if profile else None
                time.sleep(measure_s)
                last = _sample(w)
                if spy is not None:
                    spy.wait(timeout=60)
                assert w.proc is not None
                rss, hwm = status_kb(w.proc.pid, "VmRSS") / 1024, status_kb(w.proc.pid, "VmHWM") / 1024
                by_engine: dict[str, list[Replica]] = {}
                for r in bed.replicas:
                    by_engine.setdefault(r.spec.engine, []).append(r)
                failures = [
                    fail_one(w, group[k % len(group)], timeout_s=60)
                    for k in range(rounds)
                    for group in by_engine.values()
                ]
            finally:
                gen.stop()
    elapsed = last.at - first.at
    latencies = [f.latency_s for f in failures if f.latency_s is not None]
    return SizeResult(
        replicas=replicas,
        engines=engines,
        measure_s=round(elapsed, 1),
        lines_written_per_s=round(replicas * lines_per_s + client_rate, 1),
        lines_processed_per_s=round((last.lines - first.lines) / elapsed, 1),
        dropped=int(last.dropped),
        watcher_cpu_pct=round(100 * (last.watcher_cpu_s - first.watcher_cpu_s) / elapsed, 2),
        proxies_cpu_pct=round(100 * (last.proxies_cpu_s - first.proxies_cpu_s) / elapsed, 2),
        rss_mb=round(rss, 1),
        hwm_mb=round(hwm, 1),
        failures=[{**asdict(f), "latency_s": f.latency_s} for f in failures],
        latency_median_s=round(statistics.median(latencies), 3) if latencies else None,
        latency_p99_s=round(percentile(latencies, 99), 3) if latencies else None,
        latency_max_s=round(max(latencies), 3) if latencies else None,
        not_drained=sum(f.drained_at is None for f in failures),
        steady_findings={
            rule: int(n - first.findings.get(rule, 0.0))
            for rule, n in sorted(last.findings.items())
            if n > first.findings.get(rule, 0.0)
        },
    )


GROWTH = ("lines_processed_per_s", "watcher_cpu_pct", "rss_mb", "latency_p99_s")


def table(results: list[SizeResult]) -> str:
    base = results[0]
    rows = [
        "| replicas | engines | lines/s written | processed | dropped | watcher CPU (% of a core) | proxies CPU "
        "| RSS MB (peak) | failure→drain median / p99 / max s (n) | findings while steady |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        lat = (
            f"{r.latency_median_s} / {r.latency_p99_s} / {r.latency_max_s} ({len(r.failures) - r.not_drained}"
            f"{f', {r.not_drained} not drained' if r.not_drained else ''})"
        )
        rows.append(
            f"| {r.replicas} | {r.engines} | {r.lines_written_per_s:g} | {r.lines_processed_per_s:g} | {r.dropped} "
            f"| {r.watcher_cpu_pct:g} | {r.proxies_cpu_pct:g} | {r.rss_mb:g} ({r.hwm_mb:g}) | {lat} "
            f"| {', '.join(f'{rule} {n}' for rule, n in r.steady_findings.items()) or 0} |"
        )
    if len(results) > 1:
        rows.append("")
        rows.append(
            "growth against the smallest fleet (the fleet itself: "
            + ", ".join(f"{r.replicas / base.replicas:.1f}x" for r in results[1:])
            + ")"
        )
        for name in GROWTH:
            b = getattr(base, name)
            if not b:
                continue
            ratios = ", ".join(f"{(getattr(r, name) or 0) / b:.2f}x" for r in results[1:])
            rows.append(f"  {name}: {ratios}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="12,24,48", help="fleet sizes, comma-separated")
    parser.add_argument("--engines", type=int, default=3)
    parser.add_argument("--lines-per-s", type=float, default=20.0, help="noise lines each replica prints")
    parser.add_argument("--client-rate", type=float, default=1.0, help="requests/s per replica through Nginx")
    parser.add_argument("--measure-s", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2, help="failures per engine, one at a time")
    parser.add_argument("--quick", action="store_true", help="CI: 2 engines, 4 replicas, short windows")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the watcher in each window into DIR")
    args = parser.parse_args(argv)
    if args.quick:
        sizes, args.engines, args.measure_s, args.rounds = [4], 2, 15.0, 1
    else:
        sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        for n in sizes:
            result = run_size(
                n,
                args.engines,
                args.lines_per_s,
                args.client_rate,
                args.measure_s,
                args.rounds,
                Path(tmp),
                args.profile,
            )
            print(json.dumps(asdict(result)), flush=True)
            results.append(result)
    doc = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "results": [asdict(r) for r in results]}
    print(f"\nfleet benchmark, {doc['date']}, {doc['machine']}\n")
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
