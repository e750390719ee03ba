"""`python -m testbed demo` / `make demo`: the failure serving-watcher exists to prevent, shown live, twice.

Three TF-Serving replicas behind Nginx take steady traffic while one of them goes bad (by default
it leaks memory towards its container limit). The scenario runs first as the seed design runs it
(restart policy + health check) and then with serving-watcher watching. A live terminal view shows
each replica's weight, memory and runway, the errors clients see, findings and the drain →
restart → verify → restore steps; a summary compares the two runs. Everything is real: Docker,
Nginx, the kernel's OOM killer, and the load generator's every request.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from testbed.events import EventRecorder
from testbed.harness import HarnessSpec, Watcher
from testbed.loadgen import LoadGenerator
from testbed.replicas import Replica
from testbed.stack import MODELS_DIR, Testbed, TestbedConfig
from watcher.actions.nginx import UpstreamFile

RATE = 20.0
FAULT_AT_S = 5.0


@dataclass(frozen=True)
class Scenario:
    name: str
    describe: str
    seconds: float
    memory_limit: str = "192m"

    def inject(self, bed: Testbed, sick: Replica) -> None:
        if self.name == "leak":
            sick.set_faults({"leak": {"mb_per_s": 4}})
        elif self.name == "error-ramp":
            sick.set_faults({"error_ramp": {"start": 0.0, "end": 0.6, "over_s": 30}})
        elif self.name == "stale-version":
            sick.set_faults({"stale_on_restart": {"version": 1}})
            sick.set_faults({"crash": {"after_s": 0.2}})
        else:
            raise ValueError(f"unknown scenario {self.name!r}")


SCENARIOS = {
    "leak": Scenario("leak", "replica 1 leaks 4 MB/s towards its 192 MiB limit", 60),
    "error-ramp": Scenario("error-ramp", "replica 1 answers a rising share of 500s (0 -> 60 % over 30 s)", 45),
    "stale-version": Scenario("stale-version", "replica 1 crashes and comes back serving model version 1", 45),
}


@dataclass
class PhaseResult:
    label: str
    requests: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    oom_kills: int = 0
    restarts: int = 0
    first_failure_s: float | None = None
    last_failure_s: float | None = None
    incidents: list[dict[str, Any]] = field(default_factory=list)
    first_finding_s: float | None = None


class _Memory:
    """RSS of each replica from the simulator's admin port, with a runway estimate."""

    def __init__(self) -> None:
        self.samples: dict[str, deque[tuple[float, float]]] = {}
        self.http = requests.Session()
        self.http.trust_env = False

    def read(self, replica: Replica) -> tuple[float | None, float | None, float | None]:
        try:
            doc = self.http.get(f"{replica.admin_url}/status", timeout=0.5).json()
        except (requests.RequestException, ValueError):
            return None, None, None
        rss, limit = float(doc.get("rss_bytes") or 0), float(doc.get("memory_limit_bytes") or 0)
        hist = self.samples.setdefault(replica.name, deque(maxlen=10))
        now = time.monotonic()
        if hist and rss < hist[-1][1] * 0.7:
            hist.clear()  # restarted: relearn
        hist.append((now, rss))
        runway = None
        if len(hist) >= 4 and limit > 0:
            (t0, r0), (t1, r1) = hist[0], hist[-1]
            slope = (r1 - r0) / max(t1 - t0, 1e-6)
            if slope > 256 * 1024:  # growing more than 0.25 MB/s
                runway = max(0.0, (limit - r1) / slope)
        return rss, limit or None, runway


def _view(
    label: str,
    scenario: Scenario,
    bed: Testbed,
    gen: LoadGenerator,
    t0: float,
    memory: _Memory,
    watcher: Watcher | None,
    log: deque[str],
) -> Group:
    now = time.monotonic() - t0
    records = list(gen.completed)
    recent = [r for r in records if r.started_s >= now - 5]
    table = Table(expand=True, title=f"{label} — {scenario.describe}", title_justify="left")
    for col in ("replica", "weight", "memory", "runway", "errors (5 s)", "finding", "step"):
        table.add_column(col)
    weights: dict[str, str] = {}
    if bed.nginx is not None:
        for server in UpstreamFile(bed.nginx.upstreams_conf_path.read_text()).servers:
            weights[server.address] = "0 (drained)" if server.weight == 0 else str(server.weight)
    firing: dict[str, str] = {}
    steps: dict[str, str] = {}
    if watcher is not None:
        for f in watcher.live.findings:
            if not f.resolved:
                firing[f.target.container] = f"{f.predicts.value} ({f.rule_id})"
        for incident in watcher.journal.incidents(open_only=True):
            if incident.steps:
                steps[incident.target.split("/", 1)[1]] = incident.steps[-1].name
    for replica in bed.replicas:
        rss, limit, runway = memory.read(replica)
        mine = [r for r in recent if r.final_upstream == replica.address]
        bad = sum(1 for r in mine if not r.ok)
        mem = f"{rss / 2**20:5.0f} / {limit / 2**20:.0f} MiB" if rss and limit else "down"
        style = "red" if rss and limit and rss / limit > 0.85 else ""
        table.add_row(
            replica.name.rsplit("-", 1)[-1],
            weights.get(replica.address, "?"),
            Text(mem, style=style),
            f"{runway:4.0f} s" if runway is not None else "-",
            Text(f"{bad}/{len(mine)}", style="red" if bad else ""),
            firing.get(replica.name, ""),
            steps.get(replica.name, ""),
        )
    ok_recent = sum(1 for r in recent if r.ok)
    failed = sum(1 for r in records if not r.ok)
    footer = Text(
        f"t={now:5.1f}s  clients: {len(records)} requests, {failed} failed; "
        f"success in the last 5 s: {100 * ok_recent / max(len(recent), 1):5.1f} %",
        style="bold red" if failed else "bold green",
    )
    return Group(table, footer, Panel("\n".join(log) or "-", title="events", height=10))


def run_phase(scenario: Scenario, with_watcher: bool, console: Console, live_view: bool = True) -> PhaseResult:
    label = "with serving-watcher" if with_watcher else "seed design (restart policy + health check)"
    smoke = json.loads((MODELS_DIR / "half_plus_two" / "2" / "smoke.json").read_text())
    cfg = TestbedConfig(replicas=3, weights=(3, 2, 1), memory_limit=scenario.memory_limit, health_interval_s=30.0)
    result = PhaseResult(label)
    with tempfile.TemporaryDirectory(prefix="watcher-demo-") as tmp, Testbed(cfg) as bed:
        sick = bed.replicas[1]
        events = EventRecorder(bed.client, bed.run_id).start()
        watcher = Watcher(HarnessSpec.for_testbed(bed, Path(tmp) / "w.db")).start() if with_watcher else None
        memory = _Memory()
        log: deque[str] = deque(maxlen=8)
        gen = LoadGenerator(
            bed.url,
            "half_plus_two",
            rate_per_s=RATE,
            duration_s=scenario.seconds,
            timeout_s=5.0,
            instances=smoke["instances"],
            expected={"2": smoke["predictions"]},
        )
        t0 = time.monotonic()
        wall0 = time.time()
        gen.start()
        injected = False
        seen_events = 0
        seen_findings = 0
        with Live(console=console, refresh_per_second=2, transient=False, auto_refresh=False) as live:
            while not gen._done.is_set():
                now = time.monotonic() - t0
                if not injected and now >= FAULT_AT_S:
                    scenario.inject(bed, sick)
                    injected = True
                    log.append(f"{now:5.1f}s fault: {scenario.describe}")
                for e in events.events()[seen_events:]:
                    seen_events += 1
                    if e.action in ("oom", "die", "start", "restart") or e.action.startswith("health_status"):
                        code = f" exit {e.attributes.get('exitCode')}" if e.action == "die" else ""
                        log.append(f"{e.ts - wall0:5.1f}s docker {e.action}{code} {e.container.rsplit('-', 1)[-1]}")
                if watcher is not None:
                    for f in list(watcher.live.findings)[seen_findings:]:
                        seen_findings += 1
                        if not f.resolved:
                            who = f.target.container.rsplit("-", 1)[-1]
                            log.append(f"{f.ts - wall0:5.1f}s finding {f.predicts.value} ({f.rule_id}) {who}")
                if live_view:
                    live.update(_view(label, scenario, bed, gen, t0, memory, watcher, log), refresh=True)
                time.sleep(0.5)
            if live_view:
                live.update(_view(label, scenario, bed, gen, t0, memory, watcher, log), refresh=True)
        console.print()
        load = gen.result()
        if watcher is not None:
            watcher.wait(timeout_s=120)
            result.incidents = [i.to_json() for i in watcher.journal.incidents()]
            findings = [f.ts - wall0 for f in watcher.live.findings if not f.resolved]
            result.first_finding_s = min(findings) if findings else None
            watcher.stop()
        events.stop()
        result.requests, result.failed, result.statuses = load.requests, load.failed, load.status_counts
        failures = [r.started_s for r in load.records if not r.ok]
        if failures:
            result.first_failure_s, result.last_failure_s = failures[0], failures[-1]
        result.oom_kills = len(events.events(sick.name, "oom"))
        result.restarts = len([e for e in events.events(sick.name) if e.action == "start"])
    return result


def summary(scenario: Scenario, phases: list[PhaseResult]) -> Table:
    table = Table(title=f"what happened — scenario {scenario.name}: {scenario.describe}", title_justify="left")
    table.add_column("")
    for p in phases:
        table.add_column(p.label)

    def row(name: str, values: list[str]) -> None:
        table.add_row(name, *values)

    row("requests", [str(p.requests) for p in phases])
    row("failed requests", [f"{p.failed} ({100 * p.failed / max(p.requests, 1):.1f} %)" for p in phases])
    row("outcomes", [", ".join(f"{k}: {v}" for k, v in sorted(p.statuses.items())) for p in phases])
    row("OOM kills", [str(p.oom_kills) for p in phases])
    row("container (re)starts", [str(p.restarts) for p in phases])
    row(
        "clients saw errors",
        [
            f"{p.first_failure_s:.1f}s .. {p.last_failure_s:.1f}s" if p.first_failure_s is not None else "never"
            for p in phases
        ],
    )
    row(
        "first finding",
        [
            f"{p.first_finding_s - FAULT_AT_S:.1f}s after the fault" if p.first_finding_s is not None else "-"
            for p in phases
        ],
    )
    row(
        "watcher actions",
        [
            "; ".join(f"{i['state']}: " + " > ".join(s["name"] for s in i["steps"]) for i in p.incidents) or "-"
            for p in phases
        ],
    )
    return table


def run_demo(scenario: str = "leak", console: Console | None = None, live_view: bool = True) -> int:
    console = console or Console()
    sc = SCENARIOS[scenario]
    console.rule(f"serving-watcher demo: {sc.describe}")
    console.print(
        "Three TF-Serving simulator replicas (Docker, 127.0.0.1) behind Nginx (weights 3/2/1), 20 requests/s.\n"
        "First as the seed design runs it, then with serving-watcher watching the same fault."
    )
    phases = []
    for with_watcher in (False, True):
        phases.append(run_phase(sc, with_watcher, console, live_view=live_view))
    console.print(summary(sc, phases))
    seed, watched = phases
    if watched.failed < seed.failed:
        console.print(
            f"[bold green]serving-watcher turned {seed.failed} failed requests into {watched.failed}.[/bold green]"
        )
    else:
        console.print(
            f"[bold red]serving-watcher did not reduce failures ({seed.failed} -> {watched.failed}).[/bold red]"
        )
    return 0
