"""Chaos benchmark: the seed design vs docker-autoheal vs serving-watcher, on the same failures (issue 8).

    python -m benchmarks.chaos --scenario leak-oom,stale-version --strategy none,seed,autoheal,watcher \\
        --seconds 90 --json out/chaos.json [--set leak.mb_per_s=8 ...] [--quick]

For every scenario x strategy a fresh testbed comes up (3 simulator replicas, 3/2/1 behind Nginx
with 3 s proxy timeouts, Prometheus, Alertmanager; every replica with the seed's health check —
``GET /v1/models/<name>`` every 30 s, 10 s timeout, 3 retries — and ``restart: unless-stopped``),
an open-loop load generator sends ``load.rate`` predictions/s through Nginx and checks each answer
against the expected model version's output, the scenario's fault is injected after a 5 s warm-up,
and at the end the testbed is torn down. Strategies differ only in what acts on the stack:

- ``none``: the restart policy only (the health check runs, nothing reads it);
- ``seed``: the same — Docker never restarts an unhealthy-but-running container — listed separately
  because it is the design we were given (its HEALTHCHECK, restart policy, Nginx passive checks);
- ``autoheal``: the seed plus a docker-autoheal loop here (every 5 s, restart with a 10 s stop
  timeout every container whose ``State.Health.Status`` is ``unhealthy``);
- ``watcher``: the seed plus the watcher as users deploy it (:mod:`testbed.deployed`): ``watcher run
  --config deploy/watcher.yaml`` as its own process, the testbed's addresses and paths in
  ``WATCHER_*`` variables and nothing else, Docker only through the shipped socket proxy
  (``watcher.guard_proxy``), the real Nginx rewritten and reloaded, Alertmanager alerted; its
  findings and incidents read back with ``watcher findings/incidents --json``. The testbed's
  Prometheus scrapes every 5 s, as the shipped ``deploy/prometheus/prometheus.yml`` does.

Writes the JSON (a list, one object per scenario x strategy), a markdown table next to it
(``PATH`` with ``.md``) and one PNG timeline per scenario (``PATH`` stem + ``-<scenario>.png``).
Durations: see ``--list``; the default full run (all 11 scenarios x 4 strategies) is about
2 hours (healthy-noise and healthy-noise-fast 40 minutes each), ``--quick`` about 2.5 minutes.

``--server mlserver|kserve`` (issue 16) runs the same strategies on real MLServer 1.7.1 or KServe 0.16.0
replicas (:mod:`testbed.oip_replicas`, the offline image; 512 MB limits, the seed's health check on
``/v2/health/ready``) for the scenarios their models can make (``OIP_SCENARIOS``): the fault is the
model's own switch file, so the servers' real logs and metrics are what the watcher reads. The table's
``server`` column says which; ``--table`` merges rows by scenario, server and strategy.

The rate sweep (issue 17), ``--sweep leak`` or ``--rates 1,2,4,8,16,32``: ``leak-oom`` at each rate under
the same limit (``--set bed.memory_limit_mb=...``), strategies none, seed and watcher unless
``--strategy`` says otherwise, each run as long as the warm-up, the time the leak takes from the
simulator's resting ~60 MB to the limit and a margin (``--list`` prints them: 250 s at 1 MB/s down to
42 s at 32 MB/s; the whole sweep about 40 minutes). The .md leads with a table per rate — failed
requests per strategy, the watcher's first finding, its lead over the none run's failure, and whether
that finding came no later than half the time to the limit (the none run's OOM kill, else the
estimate) — then every run's row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.chaos_scenarios import (
    FAULTY,
    OIP_MEMORY_LIMIT_MB,
    OIP_SCENARIOS,
    QUICK_SCENARIOS,
    QUICK_SECONDS,
    QUICK_SETS,
    QUICK_STRATEGIES,
    SCENARIOS,
    SERVERS,
    STRATEGIES,
    Context,
    PhasedExpected,
    Scenario,
    faulty_indices,
    parse_set,
    testbed_config,
)
from testbed.events import EventRecorder
from testbed.harness import HarnessSpec
from testbed.loadgen import LoadGenerator, LoadResult, RequestRecord, percentile
from testbed.stack import Testbed

REPO = Path(__file__).resolve().parents[1]
AUTOHEAL_INTERVAL_S = 5.0
SAMPLE_INTERVAL_S = 1.0
TAIL_S = 3.0  # after the load ends, before the books are closed


# --------------------------------------------------------------------------------- strategies
class Autoheal:
    """docker-autoheal's loop: poll health, ``docker restart -t 10`` the unhealthy ones."""

    def __init__(self, bed: Testbed, interval_s: float = AUTOHEAL_INTERVAL_S) -> None:
        self.bed = bed
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self.restarts: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._loop, name="autoheal", daemon=True)

    def start(self) -> Autoheal:
        self._thread.start()
        return self

    def _loop(self) -> None:
        for _ in range(1_000_000):  # bounded; ends with stop()
            if self.stop_event.wait(self.interval_s):
                return
            for replica in list(self.bed.replicas):
                try:
                    state = replica.state()
                    health = state.get("Health") or {}
                    # like docker-autoheal's /containers/json?filters=health=unhealthy: running ones only
                    # (Docker also marks a container that exited "unhealthy")
                    if state.get("Running") and health.get("Status") == "unhealthy":
                        self.restarts.append((time.time(), replica.name))
                        replica.container.restart(timeout=10)
                except Exception:
                    continue

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=30)


class MemorySampler:
    """Memory of the faulty replica (:meth:`testbed.replicas.Replica.memory_mb`; None while it is down)."""

    def __init__(self, bed: Testbed, index: int, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.replica = bed.replicas[index]
        self.interval_s = interval_s
        self.samples: list[tuple[float, float | None]] = []
        self.stop_event = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mem-sampler", daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        for _ in range(1_000_000):
            if self.stop_event.is_set():
                return
            self.samples.append((time.time(), self.replica.memory_mb()))
            self.stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=5)


def loadable_packs(packs: list[str]) -> tuple[list[str], list[str]]:
    """The shipped packs, or — when one of them does not load (a pack under development) — the
    files that do, so one broken pack does not silently turn the watcher strategy into ``none``."""
    from watcher.rulepack.compile import load_packs
    from watcher.rulepack.loader import RulePackError

    try:
        load_packs([Path(p) for p in packs])
        return packs, []
    except RulePackError:
        pass
    ok: list[str] = []
    bad: list[str] = []
    for p in packs:
        files = sorted(Path(p).glob("*.y*ml")) if Path(p).is_dir() else [Path(p)]
        for f in files:
            try:
                load_packs([f])
                ok.append(str(f))
            except RulePackError:
                bad.append(f.name)
    return ok, bad


# --------------------------------------------------------------------------------- one run
@dataclass
class Run:
    scenario: Scenario
    strategy: str
    seconds: float
    server: str = "tfsim"
    t0: float = 0.0  # wall clock of the load's start; every *_s below is relative to it
    fault_ts: float = 0.0
    records: list[RequestRecord] = field(default_factory=list)
    memory: list[tuple[float, float | None]] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (ts, container, action)
    findings: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    autoheal: list[tuple[float, str]] = field(default_factory=list)
    notes: list[tuple[float, str]] = field(default_factory=list)
    replica_names: list[str] = field(default_factory=list)
    startup_s: float = 0.0
    wall_s: float = 0.0
    load: dict[str, Any] = field(default_factory=dict)
    watcher_as: dict[str, Any] = field(default_factory=dict)  # how the watcher ran (the row says it)


def _merge(main: LoadResult, extra: list[LoadResult]) -> list[RequestRecord]:
    records = list(main.records)
    for res in extra:
        shift = res.t0_wall - main.t0_wall
        for r in res.records:
            records.append(
                RequestRecord(
                    index=-1,
                    scheduled_s=r.scheduled_s + shift,
                    started_s=r.started_s + shift,
                    latency_ms=r.latency_ms,
                    status=r.status,
                    http_status=r.http_status,
                    upstream=r.upstream,
                    matched=r.matched,
                    version=r.version,
                    ok=r.ok,
                    error=r.error,
                )
            )
    records.sort(key=lambda r: r.started_s)
    return records


def run_one(
    scenario: Scenario,
    strategy: str,
    seconds: float,
    workdir: Path,
    log: Any,
    watcher_stats_s: float | None = None,
    packs: list[str] | None = None,
    server: str = "tfsim",
) -> Run:
    started = time.monotonic()
    run = Run(scenario, strategy, seconds, server)
    bed = Testbed(testbed_config(scenario, strategy, server))
    bed.up()
    watcher: Any = None
    autoheal: Autoheal | None = None
    sampler: MemorySampler | None = None
    events: EventRecorder | None = None
    stop = threading.Event()
    background: threading.Thread | None = None
    try:
        run.startup_s = bed.startup_s
        run.replica_names = [r.name for r in bed.replicas]
        events = EventRecorder(bed.client, bed.run_id).start()
        if strategy == "watcher":
            from testbed.deployed import DeployedWatcher

            store = workdir / f"watcher-{scenario.name}-{bed.run_id}.db"
            spec = HarnessSpec.for_testbed(bed, store, dry_run=False)
            chosen, skipped = loadable_packs(list(packs)) if packs else (None, [])
            if skipped:
                run.notes.append((time.time(), f"rule packs that do not load, left out: {skipped}"))
                log(f"    WARNING: rule packs that do not load, left out: {skipped}")
            if watcher_stats_s is not None:
                spec.stats_interval_s = watcher_stats_s
            watcher = DeployedWatcher(spec, workdir / f"watcher-{scenario.name}-{bed.run_id}", packs=chosen)
            watcher.start()
            run.watcher_as = {
                "command": f"watcher run --config {Path(spec.config).relative_to(REPO)}",
                "docker": "through the socket proxy (watcher.guard_proxy)",
                "knobs": watcher.knobs,
            }
        elif strategy == "autoheal":
            autoheal = Autoheal(bed).start()
        sampler = MemorySampler(bed, (faulty_indices(scenario) or (FAULTY,))[0]).start()
        served = bed.served()
        expected = PhasedExpected({"2": served.predictions["2"]})
        load_p = scenario.params.get("load", {})
        gen = LoadGenerator(
            bed.url,
            served.name,
            rate_per_s=float(load_p.get("rate", 20.0)),
            duration_s=seconds,
            timeout_s=float(load_p.get("timeout_s", 5.0)),
            instances=served.instances,
            expected=expected,
            protocol=served.protocol,
        )
        ctx = Context(bed, scenario.params, expected, stop)
        gen.start()
        run.t0 = time.time()
        if stop.wait(min(scenario.warmup_s, seconds / 4)):
            pass
        run.fault_ts = scenario.inject(ctx)
        log(f"    t={run.fault_ts - run.t0:5.1f}s {ctx.notes[-1][1]}")
        if scenario.background is not None:
            background = threading.Thread(target=scenario.background, args=(ctx,), daemon=True)
            background.start()
        result = gen.result(timeout_s=seconds + 60)
        stop.set()
        if background is not None:
            background.join(timeout=30)
        extra = [g.result(timeout_s=60) for g in ctx.extra_loads]
        run.t0 = result.t0_wall
        run.records = _merge(result, extra)
        run.load = {k: v for k, v in result.to_dict(include_records=False).items() if k != "url"}
        time.sleep(TAIL_S)
        run.notes = ctx.notes
        if watcher is not None:
            try:
                watcher.wait_idle(timeout_s=60)
            except TimeoutError as exc:
                run.notes.append((time.time(), f"watcher: {exc}"))
            run.findings = [
                {
                    "ts": f["ts"],
                    "target": f["target"],
                    "rule": f["rule_id"],
                    "predicts": f["predicts"],
                    "resolved": f["resolved"],
                    "eta_s": f.get("eta_s"),
                }
                for f in watcher.findings()
            ]
            run.incidents = watcher.incidents()
            run.notes.extend(
                (time.time(), f"watcher refused: {e.get('target')} {e.get('rule')}: {e.get('why')}")
                for e in watcher.log_events("refused")
            )
        if autoheal is not None:
            autoheal.stop()
            run.autoheal = list(autoheal.restarts)
            autoheal = None
    finally:
        stop.set()
        if sampler is not None:
            sampler.stop()
            run.memory = list(sampler.samples)
        if autoheal is not None:
            autoheal.stop()
        if watcher is not None:
            code = watcher.stop()
            if code not in (0, None):
                run.notes.append((time.time(), f"watcher run exited {code} on SIGTERM"))
        if events is not None:
            events.stop()
            run.events = [(e.ts, e.container, e.action) for e in events.events()]
        bed.down()
    run.wall_s = time.monotonic() - started
    return run


# --------------------------------------------------------------------------------- measures
def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, nd)


def _acted(incident: dict[str, Any]) -> bool:
    return not incident["dry_run"] and any(s["status"] in ("done", "failed", "intent") for s in incident["steps"])


def measure(run: Run, none_failure_s: float | None) -> dict[str, Any]:
    """The row of one scenario x strategy (times in seconds from the fault's start)."""
    sc = run.scenario
    t0, fault_s = run.t0, run.fault_ts - run.t0
    records = run.records
    failed = [r for r in records if not r.ok]
    lat = [r.latency_ms for r in records]
    window = [e for e in run.events if e[0] >= t0 - 1]
    # the replica(s) the fault hits, by container name (empty: none is faulty)
    faulty_names = [run.replica_names[i] for i in faulty_indices(sc)] if run.replica_names else []
    # a restart-policy restart emits die/start, `docker restart` kill/die/stop/start/restart:
    # count every restart once, as its "start"
    restarts = sum(1 for e in window if e[2] == "start" and e[0] >= t0)
    oom = [e for e in window if e[2] == "oom"]
    # the remediation's own restarts (docker restart: kill, die, stop, start) are not failures
    remedial = [ts for ts, _name in run.autoheal] + [
        s["started"] for i in run.incidents for s in i["steps"] if s["name"] in ("restart", "recreate")
    ]
    death = [
        e
        for e in window
        if e[2] in ("oom", "die")
        and e[1] in faulty_names
        and e[0] >= run.fault_ts
        and not (e[2] == "die" and any(t - 0.5 <= e[0] <= t + 20.0 for t in remedial))
    ]
    if run.strategy == "watcher":
        acted = [i for i in run.incidents if _acted(i)]
        actions = len(acted)
        action_targets = [i["target"].split("/", 1)[-1] for i in acted]
        action_times = [i["opened"] for i in acted]
    elif run.strategy == "autoheal":
        actions = len(run.autoheal)
        action_targets = [name for _ts, name in run.autoheal]
        action_times = [ts for ts, _name in run.autoheal]
    else:
        actions, action_targets, action_times = 0, [], []
    false_actions = sum(1 for t in action_targets if t not in faulty_names)
    fresh = [f for f in run.findings if not f["resolved"] and f["ts"] >= run.fault_ts - 1]
    firsts = [f["ts"] for f in fresh if not faulty_names or any(f["target"].endswith(n) for n in faulty_names)]
    first_finding_s = (min(firsts) - run.fault_ts) if firsts else None
    # with two faulty replicas: was each found, and when (one finding per replica is not enough)
    first_by_faulty = {
        n: _round(min((f["ts"] for f in fresh if f["target"].endswith(n)), default=math.nan) - run.fault_ts)
        for n in faulty_names
    }
    after = [r for r in failed if r.started_s >= fault_s - 0.5]
    first_fail_s = (after[0].started_s - fault_s) if after else None
    death_s = (min(e[0] for e in death) - run.fault_ts) if death else None
    onsets = [x for x in (first_fail_s, death_s) if x is not None]
    failure_s = min(onsets) if onsets else None  # client-visible failure or the kernel/Docker kill
    reference = failure_s if failure_s is not None else none_failure_s
    lead = None if first_finding_s is None or reference is None else reference - first_finding_s
    if after:
        last_end = max(r.started_s + r.latency_ms / 1000.0 for r in after)
        recovery_s: float | None = last_end - fault_s
        recovered = last_end < (records[-1].started_s if records else 0) - 5.0
    else:
        recovery_s, recovered = 0.0, True
    return {
        "scenario": sc.name,
        "strategy": run.strategy,
        "server": run.server,
        "params": sc.params,
        "seconds": run.seconds,
        "requests": len(records),
        "failed": len(failed),
        "failed_ratio": round(len(failed) / len(records), 6) if records else 0.0,
        "failed_by_status": dict(sorted(_count(r.status if r.status != "200" else "wrong_version" for r in failed))),
        "p50_ms": _round(percentile(lat, 50), 1),
        "p99_ms": _round(percentile(lat, 99), 1),
        "restarts": restarts,
        "oom_kills": len(oom),
        "actions": actions,
        "false_actions": false_actions,
        "first_finding_s": _round(first_finding_s),
        "first_finding_by_faulty": first_by_faulty,
        "failure_s": _round(failure_s),
        "death_s": _round(death_s),  # the faulty replica's OOM kill or death, not the remediation's restart
        "lead_time_s": _round(lead),
        "lead_time_reference": None if lead is None else ("this run" if failure_s is not None else "none run"),
        "recovery_s": _round(recovery_s),
        "recovered": recovered,
        "fault_at_s": _round(fault_s),
        "incidents": [
            {
                "target": i["target"],
                "rule": i["rule"],
                "predicts": i["predicts"],
                "state": i["state"],
                "opened_s": _round(i["opened"] - run.fault_ts),
                "duration_s": i["duration_s"],
                "note": i["note"],
                "steps": [
                    f"{s['name']}:{s['status']}@{s['started'] - run.fault_ts:+.1f}s"
                    + (f"/{s['duration_s']:.1f}s" if s["duration_s"] is not None else "")
                    for s in i["steps"]
                ],
            }
            for i in run.incidents
        ],
        "findings": len(run.findings),
        "first_findings": [
            {"t_s": _round(f["ts"] - run.fault_ts), "target": f["target"], "rule": f["rule"], "predicts": f["predicts"]}
            for f in run.findings[:10]
        ],
        "autoheal_restarts": [{"t_s": _round(ts - run.fault_ts), "container": n} for ts, n in run.autoheal],
        "notes": [f"{ts - run.fault_ts:+.1f}s {what}" for ts, what in run.notes],
        "docker_events": [
            f"{ts - run.fault_ts:+.1f}s {c[-1:]} {a}" for ts, c, a in window if not a.startswith("exec_")
        ],
        "load": run.load,
        "startup_s": _round(run.startup_s, 1),
        "wall_s": _round(run.wall_s, 1),
        "_action_times": action_times,
    }


def _count(items: Any) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for x in items:
        counts[x] = counts.get(x, 0) + 1
    return list(counts.items())


# --------------------------------------------------------------------------------- output
TABLE_COLUMNS = [
    ("scenario", "scenario"),
    ("server", "server"),
    ("strategy", "strategy"),
    ("requests", "requests"),
    ("failed", "failed"),
    ("failed %", "failed_ratio"),
    ("p50 ms", "p50_ms"),
    ("p99 ms", "p99_ms"),
    ("restarts", "restarts"),
    ("OOM kills", "oom_kills"),
    ("actions", "actions"),
    ("false actions", "false_actions"),
    ("first finding s", "first_finding_s"),
    ("lead time s", "lead_time_s"),
    ("recovery s", "recovery_s"),
]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(key: str, row: dict[str, Any]) -> str:
        v = row.get(key, "tfsim" if key == "server" else None)  # rows from before --server ran tfsim
        if v is None:
            return "-"
        if key == "failed_ratio":
            return f"{100 * v:.2f}"
        if key == "recovery_s" and not row.get("recovered", True):
            return f"{v:g} (not recovered)"
        if isinstance(v, float):
            return f"{v:g}"
        return str(v)

    head = "| " + " | ".join(c for c, _ in TABLE_COLUMNS) + " |"
    sep = "|" + "|".join("---" if i < 3 else "---:" for i in range(len(TABLE_COLUMNS))) + "|"
    lines = [head, sep]
    lines += ["| " + " | ".join(cell(k, r) for _, k in TABLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def plot_timeline(scenario: str, runs: list[Run], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 2.6 * len(runs)), sharex=True, squeeze=False)
    for ax, run, row in zip(axes[:, 0], runs, rows, strict=True):
        fault = run.fault_ts
        end = max((r.started_s for r in run.records), default=run.seconds) + run.t0 - fault
        nbins = max(1, math.ceil(end + (fault - run.t0)) + 1)
        ok = [0] * nbins
        bad = [0] * nbins
        for r in run.records:
            b = int(r.started_s)
            if 0 <= b < nbins:
                (ok if r.ok else bad)[b] += 1
        xs = [b - (fault - run.t0) for b in range(nbins)]
        ax.bar(xs, ok, width=1.0, align="edge", color="#8fc98f", label="ok / s")
        ax.bar(xs, bad, width=1.0, align="edge", bottom=ok, color="#d9534f", label="failed / s")
        ax.set_ylabel("requests / s")
        ax.axvline(0, color="black", lw=1.2, ls="--")
        ax.text(0, ax.get_ylim()[1] * 0.95, " fault", va="top", fontsize=8)
        mem = [(ts - fault, v) for ts, v in run.memory if v is not None]
        if mem:
            ax2 = ax.twinx()
            ax2.plot([m[0] for m in mem], [m[1] for m in mem], color="#1f5fa8", lw=1.2, label="RSS MB (faulty)")
            ax2.set_ylabel("RSS MB", color="#1f5fa8")
            limit = run.scenario.params.get("bed", {}).get("memory_limit_mb")
            if limit:
                ax2.axhline(float(limit), color="#1f5fa8", ls=":", lw=0.8)
                ax2.set_ylim(0, float(limit) * 1.1)
        for ts, _c, a in run.events:
            x = ts - fault
            if a == "oom":
                ax.axvline(x, color="purple", lw=1.5)
                ax.text(x, ax.get_ylim()[1] * 0.8, " OOM", color="purple", fontsize=8)
            elif a == "die":
                ax.axvline(x, color="grey", lw=1.0, ls="-.")
            elif a == "start" and ts >= run.t0:
                ax.axvline(x, color="grey", lw=1.0, ls=":")
        for f in run.findings:
            if not f["resolved"]:
                ax.plot([f["ts"] - fault], [ax.get_ylim()[1] * 0.6], marker="v", color="orange", ms=7, ls="")
        for inc in run.incidents:
            for s in inc["steps"]:
                if s["ended"] is not None:
                    ax.axvspan(s["started"] - fault, s["ended"] - fault, color="#f0ad4e", alpha=0.25)
                    ax.text(s["started"] - fault, ax.get_ylim()[1] * 0.45, s["name"], fontsize=6, rotation=90)
        for ts, _name in run.autoheal:
            ax.axvline(ts - fault, color="teal", lw=1.5)
            ax.text(ts - fault, ax.get_ylim()[1] * 0.5, " autoheal restart", color="teal", fontsize=7)
        ax.set_title(
            f"{run.strategy}: {row['requests']} requests, {row['failed']} failed, restarts {row['restarts']}, "
            f"OOM {row['oom_kills']}, actions {row['actions']}",
            fontsize=9,
            loc="left",
        )
    axes[-1, 0].set_xlabel("seconds from fault start   (▼ finding, shaded: watcher steps, purple: OOM, dotted: start)")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    shown = {k: v for k, v in runs[0].scenario.params.items() if k != "load"}
    fig.suptitle(f"{scenario}: {runs[0].scenario.description}\n{json.dumps(shown)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------- rate sweep
SWEEP_SCENARIO = "leak-oom"
SWEEP_RATES: tuple[float, ...] = (1, 2, 4, 8, 16, 32)
SWEEP_STRATEGIES = ("none", "seed", "watcher")
# the simulator's memory before it leaks (the same start tests/unit/detectors/test_forecast_urgent.py uses)
SWEEP_BASE_MB = 60.0
SWEEP_MARGIN_S = 30.0  # after the expected OOM: the none run's kill and restart are in the run


def time_to_limit_s(rate_mb_per_s: float, limit_mb: float, base_mb: float = SWEEP_BASE_MB) -> float:
    """How long a leak at ``rate_mb_per_s`` takes from the simulator's resting memory to the limit."""
    return max(0.0, limit_mb - base_mb) / rate_mb_per_s


def sweep_seconds(
    rate_mb_per_s: float,
    limit_mb: float,
    warmup_s: float = 5.0,
    base_mb: float = SWEEP_BASE_MB,
    margin_s: float = SWEEP_MARGIN_S,
) -> float:
    """A run long enough for the leak to reach the limit — warm-up, time to the limit, then a margin
    (a quarter of the time to the limit, at least ``margin_s``) for the kill and the restart to show."""
    reach = time_to_limit_s(rate_mb_per_s, limit_mb, base_mb)
    return float(math.ceil(warmup_s + reach + max(margin_s, reach / 4)))


def half_time_goal(first_finding_s: float | None, reach_s: float | None) -> bool | None:
    """Issue 17's goal: the first finding no later than half the time the leak takes to reach the
    limit (None: no time to the limit to judge by). A leak never found misses it."""
    if reach_s is None:
        return None
    return first_finding_s is not None and first_finding_s <= reach_s / 2


def parse_rates(text: str) -> list[float]:
    rates = [float(x) for x in text.split(",") if x.strip()]
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"--rates wants positive MB/s, comma-separated (e.g. 1,2,4), got {text!r}")
    return rates


def sweep_scenarios(rates: list[float], sets: list[tuple[str, str, Any]]) -> list[tuple[float, Scenario, float]]:
    """(rate, scenario, length) per rate: the leak scenario with ``--set`` overrides, then the rate
    (the sweep's own parameter wins), named by its rate."""
    base = SCENARIOS[SWEEP_SCENARIO]
    out: list[tuple[float, Scenario, float]] = []
    for rate in rates:
        sc = base.with_overrides([*sets, ("leak", "mb_per_s", rate)])
        sc = dataclasses.replace(sc, name=f"{SWEEP_SCENARIO}-{rate:g}mbs")
        limit = float(sc.params["bed"]["memory_limit_mb"])
        out.append((rate, sc, sweep_seconds(rate, limit, sc.warmup_s)))
    return out


def sweep_row(rate: float, scenario: Scenario, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One rate's line: failed requests per strategy, the watcher's first finding, its lead over the
    none run's failure, and the half-time goal. The time to the limit is the none (or seed) run's
    OOM kill when there was one (measured), else the estimate from the resting memory."""
    by = {r["strategy"]: r for r in rows}
    ref = by.get("none") or by.get("seed")
    limit = float(scenario.params["bed"]["memory_limit_mb"])
    measured = ref.get("death_s") if ref else None
    reach = measured if measured is not None else time_to_limit_s(rate, limit)
    watcher = by.get("watcher")
    first = watcher.get("first_finding_s") if watcher else None
    none_failure = ref.get("failure_s") if ref else None
    return {
        "rate_mb_per_s": rate,
        "limit_mb": limit,
        "reach_s": _round(reach, 1),
        "reach_from": "OOM in the none run" if measured is not None else "estimate",
        "failed": {s: r["failed"] for s, r in by.items()},
        "first_finding_s": first,
        "lead_s": None if first is None or none_failure is None else _round(none_failure - first),
        "goal_half_time": half_time_goal(first, reach) if watcher else None,
        "watcher_zero_failed": (watcher["failed"] == 0) if watcher else None,
    }


def sweep_table(summary: list[dict[str, Any]]) -> str:
    """The rate sweep's markdown table, one line per rate."""
    strategies = [s for s in STRATEGIES if any(s in row["failed"] for row in summary)]

    def show(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        return f"{v:g}" if isinstance(v, float) else str(v)

    head = (
        ["MB/s", "limit MB", "to limit s"]
        + [f"failed {s}" for s in strategies]
        + ["watcher first finding s", "lead vs none s", "first <= half", "watcher 0 failed"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for row in summary:
        cells = [row["rate_mb_per_s"], row["limit_mb"], row["reach_s"]]
        cells += [row["failed"].get(s) for s in strategies]
        cells += [row["first_finding_s"], row["lead_s"], row["goal_half_time"], row["watcher_zero_failed"]]
        lines.append("| " + " | ".join(show(c) for c in cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scenario", default=",".join(SCENARIOS), help="comma list; default: all (" + ", ".join(SCENARIOS) + ")"
    )
    p.add_argument(
        "--strategy",
        default=None,
        help="comma list of none,seed,autoheal,watcher (default: all; with --sweep: "
        + ",".join(SWEEP_STRATEGIES)
        + ")",
    )
    p.add_argument("--seconds", type=float, default=None, help="scenario length (load duration); default per scenario")
    p.add_argument("--json", type=Path, default=Path("chaos.json"), help="output JSON; the .md and PNGs go next to it")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="GROUP.KEY=VALUE",
        help="override a parameter, e.g. leak.mb_per_s=8, bed.memory_limit_mb=192, load.rate=30",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI subset: leak-oom-8 under 192 MB, strategies none and watcher, 60 s each",
    )
    p.add_argument(
        "--watcher-stats",
        type=float,
        default=None,
        metavar="S",
        help="experiment knob: Docker stats period of the watcher, 0 = off (default: the shipped file's); "
        "the foresight pack's memory-runway forecast reads them",
    )
    p.add_argument(
        "--packs", nargs="+", default=None, metavar="PATH", help="rule packs for the watcher (default: rules/)"
    )
    p.add_argument(
        "--sweep",
        choices=["leak"],
        default=None,
        help=f"rate sweep: {SWEEP_SCENARIO} at every rate of --rates under the same limit, each run long enough "
        "for the OOM (time to the limit + a margin), and a table per rate",
    )
    p.add_argument(
        "--rates",
        default=None,
        metavar="MB/S,...",
        help="the sweep's leak rates (implies --sweep leak); default " + ",".join(f"{r:g}" for r in SWEEP_RATES),
    )
    p.add_argument(
        "--server",
        choices=SERVERS,
        default="tfsim",
        help="what the replicas run: the TF Serving simulator, or real MLServer/KServe (their scenarios: "
        + ", ".join(OIP_SCENARIOS)
        + f"; memory limit {OIP_MEMORY_LIMIT_MB} MB unless --set bed.memory_limit_mb)",
    )
    p.add_argument("--no-png", action="store_true", help="skip the PNG timelines")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown table of earlier runs, then exit")
    p.add_argument("--merged", type=Path, default=None, metavar="JSON", help="with --table: write the merged rows here")
    p.add_argument("--list", action="store_true", help="list the scenarios and their defaults, then exit")
    return p


def run_scenario(
    scenario: Scenario,
    strategies: list[str],
    length: float,
    workdir: Path,
    log: Any,
    args: argparse.Namespace,
    machine: str,
    png: Path | None,
) -> list[dict[str, Any]]:
    """Every strategy on one scenario, ``none`` first (its failure is the lead-time reference):
    the rows, and the scenario's timeline at ``png`` (None: none drawn)."""
    name = scenario.name
    runs: list[Run] = []
    rows: list[dict[str, Any]] = []
    none_failure: float | None = None
    for strategy in strategies:
        log(f"== {name} x {strategy} on {args.server} ({length:g} s) params {json.dumps(scenario.params)}")
        run = run_one(scenario, strategy, length, workdir, log, args.watcher_stats, args.packs, args.server)
        row = measure(run, none_failure)
        if strategy == "watcher":
            row["watcher_as"] = run.watcher_as
            stats = args.watcher_stats
            row["watcher_stats_s"] = stats if stats is not None else "shipped settings"
            row["watcher_packs"] = args.packs or "shipped"
        if strategy in ("none", "seed") and none_failure is None:
            none_failure = row["failure_s"]
        row["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        row["machine"] = machine
        runs.append(run)
        rows.append(row)
        log(
            f"   {row['requests']} requests, {row['failed']} failed {row['failed_by_status']}, "
            f"p99 {row['p99_ms']} ms, restarts {row['restarts']}, OOM {row['oom_kills']}, "
            f"actions {row['actions']} (false {row['false_actions']}), first finding {row['first_finding_s']}, "
            f"lead {row['lead_time_s']}, recovery {row['recovery_s']}  [{row['wall_s']} s]"
        )
        for inc in row["incidents"]:
            log(
                f"     incident {inc['target']} {inc['rule']} {inc['state']} at {inc['opened_s']}s "
                f"{inc['steps']} {inc['note']}"
            )
    if png is not None:
        try:
            plot_timeline(name, runs, rows, png)
            log(f"   timeline: {png}")
        except Exception as exc:
            log(f"   timeline failed: {type(exc).__name__}: {exc}")
    for r in rows:
        r.pop("_action_times", None)
    return rows


def _strategies(text: str | None, default: tuple[str, ...]) -> list[str]:
    return [s.strip() for s in (text or ",".join(default)).split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table:
        # one row per scenario x strategy, a later file's row replacing an earlier one's (a re-run)
        merged = {
            (r["scenario"], r.get("server", "tfsim"), r["strategy"]): r
            for path in args.table
            for r in json.loads(Path(path).read_text())
        }
        order = list(SCENARIOS)
        rows = sorted(
            merged.values(),
            key=lambda r: (
                order.index(r["scenario"]) if r["scenario"] in order else len(order),
                SERVERS.index(r.get("server", "tfsim")),
                STRATEGIES.index(r["strategy"]),
            ),
        )
        if args.merged is not None:
            args.merged.write_text(json.dumps(rows, indent=1, default=str))
        print(markdown_table(rows))
        return 0
    if args.list:
        for s in SCENARIOS.values():
            print(f"{s.name:18} {s.seconds:5.0f} s  {json.dumps(s.params)}  — {s.description}")
        base = SCENARIOS[SWEEP_SCENARIO]
        limit = float(base.with_overrides([]).params["bed"]["memory_limit_mb"])
        lengths = ", ".join(f"{r:g} MB/s {sweep_seconds(r, limit, base.warmup_s):g} s" for r in SWEEP_RATES)
        print(f"--sweep leak: {SWEEP_SCENARIO} at each rate under {limit:g} MB: {lengths}")
        return 0
    sets = [parse_set(x) for x in args.set]
    rates = parse_rates(args.rates) if args.rates else (list(SWEEP_RATES) if args.sweep else [])
    if args.quick:
        names, strategies = list(QUICK_SCENARIOS), list(QUICK_STRATEGIES)
        seconds = args.seconds or QUICK_SECONDS
        sets = list(QUICK_SETS) + sets
    elif rates:
        names, strategies = [SWEEP_SCENARIO], _strategies(args.strategy, SWEEP_STRATEGIES)
        seconds = args.seconds
    else:
        names = [n.strip() for n in args.scenario.split(",") if n.strip()]
        strategies = _strategies(args.strategy, STRATEGIES)
        seconds = args.seconds
    unknown = [n for n in names if n not in SCENARIOS] + [s for s in strategies if s not in STRATEGIES]
    if unknown:
        print(f"unknown scenario/strategy: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.server != "tfsim":
        not_oip = [n for n in names if n not in OIP_SCENARIOS]
        if not_oip:
            print(f"--server {args.server} runs {', '.join(OIP_SCENARIOS)}; not: {', '.join(not_oip)}", file=sys.stderr)
            return 2
        sets = [("bed", "memory_limit_mb", OIP_MEMORY_LIMIT_MB), *sets]
    for group, key, _value in sets:
        if not any(group in SCENARIOS[n].params or group in ("bed", "load") for n in names):
            print(f"warning: --set {group}.{key}: no selected scenario has parameters {group!r}", file=sys.stderr)
    strategies.sort(key=STRATEGIES.index)  # none first: its failure time is the lead-time reference

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    out_json: Path = args.json
    out_json.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    machine = f"{platform.node()} {platform.machine()} {platform.system()} {platform.release()}"
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        plan: list[tuple[Scenario, float, float | None]] = (
            [(sc, seconds or length, rate) for rate, sc, length in sweep_scenarios(rates, sets)]
            if rates
            else [(SCENARIOS[n].with_overrides(sets), seconds or SCENARIOS[n].seconds, None) for n in names]
        )
        for scenario, length, rate in plan:
            png = None if args.no_png else out_json.with_name(f"{out_json.stem}-{scenario.name}.png")
            scenario_rows = run_scenario(scenario, strategies, length, Path(tmp), log, args, machine, png)
            if rate is not None:
                for r in scenario_rows:
                    r["sweep_rate_mb_per_s"] = rate
                summary.append(sweep_row(rate, scenario, scenario_rows))
            rows.extend(scenario_rows)
            out_json.write_text(json.dumps(rows, indent=1, default=str))  # after every scenario
    total = time.monotonic() - started
    table = markdown_table(rows)
    if summary:
        table = sweep_table(summary) + "\n\nEvery run:\n\n" + table
    leads = [r["lead_time_s"] for r in rows if r["strategy"] == "watcher" and r["lead_time_s"] is not None]
    header = (
        f"Chaos benchmark on {args.server}, {time.strftime('%Y-%m-%d')}, {machine}, "
        f"load {rows[0]['params']['load'] if rows else ''}; "
        f"total {total / 60:.1f} min.\n\n"
    )
    footer = f"\n\nmedian watcher lead time: {statistics.median(leads):g} s\n" if leads else "\n"
    out_json.with_suffix(".md").write_text(header + table + footer)
    print(header + table + footer)
    log(f"wrote {out_json}, {out_json.with_suffix('.md')}; total {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
