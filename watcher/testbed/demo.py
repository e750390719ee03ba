"""`watcher demo`: the failure serving-watcher exists to prevent, shown on the real testbed.

Three replicas behind Nginx take steady traffic; one starts leaking memory. The allocator warns,
requests start failing, the kernel OOM-kills the container, Docker's restart policy brings it back
— and the clients ate the errors in between, although the logs said it was coming. The demo prints
that timeline with the client-side damage, from real Docker events, logs and load-generator records.
"""

from __future__ import annotations

import calendar
import json
import re
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from watcher.testbed.events import EventRecorder
from watcher.testbed.loadgen import LoadGenerator, LoadResult
from watcher.testbed.stack import MODELS_DIR, Testbed, TestbedConfig

WARNING_MARKERS = (
    "exceeds 10% of free system memory",
    "ran out of memory trying to allocate",
    "OOM when allocating",
)
_GLOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+): ")


def _glog_epoch(line: str) -> float | None:
    """Epoch seconds of a TF Serving glog line (the container logs in UTC)."""
    m = _GLOG_TS.match(line)
    if m is None:
        return None
    whole, _, frac = m.group(1).partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%d %H:%M:%S")) + float(f"0.{frac or 0}")


@dataclass(frozen=True)
class TimelineEntry:
    t: float  # seconds since the scenario started
    what: str


def _expected_outputs(model: str) -> tuple[list[float], dict[str, list[float]]]:
    versions = sorted((p for p in (MODELS_DIR / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    smoke = {p.name: json.loads((p / "smoke.json").read_text()) for p in versions}
    newest = versions[-1].name
    return smoke[newest]["instances"], {newest: smoke[newest]["predictions"]}


def run_demo(seconds: int = 60, leak_mb_per_s: float = 16.0, out: TextIO = sys.stdout) -> int:
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    instances, expected = _expected_outputs("half_plus_two")
    say("starting the testbed: 3 TF-Serving simulator replicas (192 MiB limit) behind Nginx (weights 3/2/1),")
    say("Prometheus scraping every second. Everything on 127.0.0.1.")
    bed = Testbed(TestbedConfig(replicas=3, weights=(3, 2, 1), memory_limit="192m"))
    bed.up()
    try:
        say(f"  up in {bed.startup_s:.1f} s: nginx {bed.url}, prometheus {bed.describe()['prometheus']}")
        sick = bed.replicas[1]
        events = EventRecorder(bed.client, bed.run_id).start()
        load = LoadGenerator(
            bed.url,
            "half_plus_two",
            rate_per_s=20,
            duration_s=seconds,
            timeout_s=5.0,
            instances=instances,
            expected=expected,
        ).start()
        t0 = time.time()
        timeline = [TimelineEntry(0.0, "load starts: 20 requests/s through Nginx")]
        time.sleep(5)
        sick.set_faults({"leak": {"mb_per_s": leak_mb_per_s}})
        timeline.append(TimelineEntry(time.time() - t0, f"{sick.name} starts leaking {leak_mb_per_s:g} MB/s"))
        say(f"  t={time.time() - t0:4.1f}s  injected a memory leak into {sick.name}; waiting {seconds} s ...")
        result: LoadResult = load.result(timeout_s=seconds + 30)
        events.stop()
        for e in events.events(sick.name):
            if e.action in ("oom", "die", "start", "restart") or e.action.startswith("health_status"):
                detail = f" (exit code {e.attributes['exitCode']})" if e.action == "die" else ""
                timeline.append(TimelineEntry(e.ts - t0, f"docker: {e.action}{detail}"))
        logs = sick.logs()
        warn_lines = [line for line in logs.splitlines() if any(m in line for m in WARNING_MARKERS)]
        if warn_lines:
            first = _glog_epoch(warn_lines[0])
            if first is not None:
                timeline.append(
                    TimelineEntry(first - t0, "log: first allocator warning (the failure announces itself)")
                )
        failures = [r for r in result.records if not r.ok]
        if failures:
            timeline.append(TimelineEntry(failures[0].started_s, f"first failed request: {failures[0].status}"))
            timeline.append(TimelineEntry(failures[-1].started_s, f"last failed request: {failures[-1].status}"))
        say("")
        say("timeline (seconds since load started):")
        for entry in sorted((e for e in timeline if e.t >= 0), key=lambda e: e.t):
            say(f"  {entry.t:6.1f}  {entry.what}")
        if warn_lines:
            say(f"  the logs warned {len(warn_lines)} times before the kill; first warning:")
            say(f"    {warn_lines[0][:160]}")
        say("")
        say(
            f"clients: {result.requests} requests, {result.failed} failed ({100 * result.failed_ratio:.1f} %), "
            f"p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms; outcomes {result.status_counts}"
        )
        say(f"docker: restart count of {sick.name} = {sick.restart_count()}")
        say("")
        say("Every failed request above came after the allocator had started warning. serving-watcher's job")
        say("is to read those warnings, drain the replica and restart it before the kernel kills it.")
        return 0
    finally:
        bed.down()
        say("testbed torn down.")
