"""The chaos benchmark's scenarios and strategies (see ``benchmarks/chaos.py`` and issue 8).

A scenario is a fault (and its parameters, every one overridable with ``--set group.key=value``),
the replica it hits, how long the run lasts and how the fault is injected into a running testbed.
Parameters are grouped: a fault's own name (``leak``, ``error_ramp``, ...) holds what is sent to the
simulator; ``bed`` holds testbed knobs (``memory_limit_mb``); ``load`` the client (``rate``,
``timeout_s``); other groups are scenario-specific (``publish``, ``sawtooth``, ``jitter``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.oip_replicas import SERVERS as OIP_SERVERS
from testbed.stack import MODELS_DIR, Testbed, TestbedConfig
from watcher.rulepack.durations import parse_duration

REPO = Path(__file__).resolve().parents[1]

MODEL = "half_plus_two"
SMOKE = {v: json.loads((MODELS_DIR / MODEL / v / "smoke.json").read_text()) for v in ("1", "2")}
INSTANCES: list[Any] = SMOKE["2"]["instances"]
# version 3 (published by load-failure) is version 2 with another offset, so its outputs differ
V3_MODEL_JSON = {
    "kind": "affine",
    "scale": 0.5,
    "offset": 4.0,
    "load_seconds": 0.3,
    "input_name": "x",
    "output_name": "y",
}
V3_PREDICTIONS = [0.5 * x + 4.0 for x in INSTANCES]

STRATEGIES = ("none", "seed", "autoheal", "watcher")
SERVERS = ("tfsim", *OIP_SERVERS)  # --server: the simulator or a real MLServer/KServe (testbed/oip_replicas.py)
# what the real servers' models can do (testbed.oip_replicas.model_switch): not latency-creep (no ramping
# delay), not load-failure (neither polls a model repository for new versions)
OIP_SCENARIOS = ("leak-oom", "leak-oom-8", "error-ramp", "hang", "hard-kill", "stale-version", "healthy-noise-fast")
OIP_MEMORY_LIMIT_MB = 512  # MLServer rests at 150-180 MB, KServe at 85-90 MB (2026-12-02): room for the leak to grow
FAULTY = 1  # the replica every fault hits (weight 2 of 3/2/1: a third of the traffic)
DEFAULT_LOAD = {"rate": 20.0, "timeout_s": 5.0}


class PhasedExpected(Mapping[str, list[Any]]):
    """{version label: predictions} that changes over (wall) time: the load generator reads it on
    every response, so a deploy can move the expected version mid-run."""

    def __init__(self, initial: dict[str, list[Any]]) -> None:
        self._phases: list[tuple[float, dict[str, list[Any]]]] = [(0.0, initial)]
        self._lock = threading.Lock()

    def add_phase(self, from_wall: float, expected: dict[str, list[Any]]) -> None:
        with self._lock:
            self._phases.append((from_wall, expected))
            self._phases.sort(key=lambda p: p[0])

    def _current(self) -> dict[str, list[Any]]:
        now = time.time()
        with self._lock:
            current = self._phases[0][1]
            for ts, exp in self._phases:
                if ts <= now:
                    current = exp
            return current

    def __getitem__(self, key: str) -> list[Any]:
        return self._current()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._current()))

    def __len__(self) -> int:
        return len(self._current())


@dataclass
class Context:
    """What an injector gets: the running testbed, the scenario's parameters, the expected outputs
    (to move on a deploy), a stop event and a place to note what it did, in wall-clock time."""

    bed: Testbed
    params: dict[str, dict[str, Any]]
    expected: PhasedExpected
    stop: threading.Event
    notes: list[tuple[float, str]] = field(default_factory=list)
    extra_loads: list[Any] = field(default_factory=list)  # LoadGenerators started by the scenario

    def note(self, what: str) -> float:
        ts = time.time()
        self.notes.append((ts, what))
        return ts


@dataclass
class Scenario:
    name: str
    description: str
    seconds: float
    params: dict[str, dict[str, Any]]
    inject: Callable[[Context], float]  # returns the wall-clock time the fault started
    # the replica(s) the fault hits; None: no replica is faulty (any action is a false action)
    faulty: int | tuple[int, ...] | None = FAULTY
    warmup_s: float = 5.0
    background: Callable[[Context], None] | None = None  # runs in a thread until ctx.stop

    def with_overrides(self, sets: list[tuple[str, str, Any]]) -> Scenario:
        params = copy.deepcopy(self.params)
        params.setdefault("load", dict(DEFAULT_LOAD))
        params.setdefault("bed", {"memory_limit_mb": 256})
        for group, key, value in sets:
            if group in params or group in ("load", "bed"):
                params.setdefault(group, {})[key] = value
        return Scenario(
            self.name, self.description, self.seconds, params, self.inject, self.faulty, self.warmup_s, self.background
        )


def faulty_indices(scenario: Scenario) -> tuple[int, ...]:
    """The replicas a scenario's fault hits, as a tuple (empty when none is faulty), so a scenario
    with two faulty replicas is measured with the same code as one with one."""
    if scenario.faulty is None:
        return ()
    return (scenario.faulty,) if isinstance(scenario.faulty, int) else tuple(scenario.faulty)


def parse_set(text: str) -> tuple[str, str, Any]:
    """``leak.mb_per_s=8`` -> ("leak", "mb_per_s", 8); values are JSON when they parse as JSON."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ValueError(f"--set wants group.key=value (e.g. leak.mb_per_s=8), got {text!r}")
    lhs, raw = text.split("=", 1)
    group, key = lhs.split(".", 1)
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return group, key, value


def testbed_config(scenario: Scenario, strategy: str, server: str = "tfsim") -> TestbedConfig:
    """The same stack for every strategy: what differs is what acts on it (see chaos.py)."""
    bed = scenario.params.get("bed", {})
    return TestbedConfig(
        server=server,
        replicas=3,
        weights=(3, 2, 1),
        memory_limit=f"{int(bed.get('memory_limit_mb', 256))}m",
        restart_policy="unless-stopped",
        proxy_timeout_s=3.0,
        # the seed's health check: every 30 s, 10 s timeout (curl 9 s + 1), 3 retries
        health_interval_s=30.0,
        health_timeout_s=9.0,
        health_retries=3,
        # as the shipped Prometheus scrapes (deploy/prometheus/prometheus.yml): the watcher's series
        # are as fresh as in a deployment, not fresher
        scrape_interval_s=shipped_scrape_interval_s(),
    )


def shipped_scrape_interval_s() -> float:
    doc = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    return parse_duration(str(doc["global"]["scrape_interval"]))


def _fault(name: str) -> Callable[[Context], float]:
    def inject(ctx: Context) -> float:
        ctx.bed.replicas[FAULTY].set_faults({name: ctx.params[name]})
        return ctx.note(f"fault: {name} {json.dumps(ctx.params[name], sort_keys=True)} on replica {FAULTY}")

    return inject


def _faults_on(assignments: dict[int, str]) -> Callable[[Context], float]:
    """Several faults at once, one per replica ({replica index: fault name}; the fault's parameter
    group is its name): all are set before the returned start time, so they start together."""

    def inject(ctx: Context) -> float:
        for index, name in assignments.items():
            ctx.bed.replicas[index].set_faults({name: ctx.params[name]})
        what = ", ".join(
            f"{name} {json.dumps(ctx.params[name], sort_keys=True)} on replica {index}"
            for index, name in assignments.items()
        )
        return ctx.note(f"faults at once: {what}")

    return inject


def _hard_kill(ctx: Context) -> float:
    """SIGKILL the replica's server process from the host (as the kernel or an operator's kill -9
    would). ``kill.via=docker`` uses ``docker kill`` instead, which Docker counts as a manual stop:
    no restart policy brings the container back."""
    replica = ctx.bed.replicas[FAULTY]
    sig = str(ctx.params["kill"].get("signal", "SIGKILL"))
    if ctx.params["kill"].get("via", "pid") == "docker":
        ts = ctx.note(f"fault: docker kill -s {sig} replica {FAULTY}")
        replica.kill(sig)
        return ts
    pid = int(replica.state()["Pid"])  # the container's main process, started by this testbed
    ts = ctx.note(f"fault: kill -{sig} {pid} (replica {FAULTY}'s server process)")
    os.kill(pid, getattr(signal, sig))
    return ts


def _load_failure(ctx: Context) -> float:
    replica = ctx.bed.replicas[FAULTY]
    replica.set_faults({"fail_load": ctx.params["fail_load"]})
    version = int(ctx.params["publish"].get("version", 3))
    grace = float(ctx.params["publish"].get("grace_s", 5.0))
    ts = ctx.note(f"deploy: version {version} published; replica {FAULTY} fails to load it")
    # while replicas pick the new version up, either output is right; afterwards only the new one
    ctx.expected.add_phase(ts, {"2": SMOKE["2"]["predictions"], str(version): V3_PREDICTIONS})
    ctx.expected.add_phase(ts + grace, {str(version): V3_PREDICTIONS})
    ctx.bed.publish_version(version, V3_MODEL_JSON)
    return ts


def _stale_version(ctx: Context) -> float:
    replica = ctx.bed.replicas[FAULTY]
    replica.set_faults({"stale_on_restart": ctx.params["stale_on_restart"]})
    replica.set_faults({"crash": ctx.params["crash"]})  # Docker brings it back ... serving the old version
    return ctx.note(
        f"fault: replica {FAULTY} crashes and comes back serving version "
        f"{ctx.params['stale_on_restart'].get('version')}"
    )


def _noise_start(ctx: Context) -> float:
    lines = ctx.params["noise"]
    for r in ctx.bed.replicas:
        r.set_faults({"noise": lines})
    return ctx.note(f"noise {json.dumps(lines)} on every replica, GC sawtooth on replica {FAULTY}, load bursts")


def _noise_background(ctx: Context) -> None:
    """GC sawtooth (every ``period_s``: leak at ``mb_per_s`` up to ``max_mb`` for ``on_s`` —
    default half the period — then free it all) and load bursts."""
    from testbed.loadgen import LoadGenerator

    saw = ctx.params.get("sawtooth", {})
    jit = ctx.params.get("jitter", {})
    period = float(saw.get("period_s", 30.0))
    on_s = min(float(saw.get("on_s", period / 2)), period)
    every = float(jit.get("every_s", 30.0))
    replica = ctx.bed.replicas[FAULTY]
    served = ctx.bed.served()
    leaking = False
    next_saw = time.monotonic()
    next_burst = time.monotonic() + every / 2
    for _ in range(100_000):  # bounded; ends with ctx.stop
        if ctx.stop.is_set():
            break
        now = time.monotonic()
        try:
            if saw and now >= next_saw:
                if leaking:
                    replica.clear_fault("leak")
                else:
                    replica.set_faults(
                        {"leak": {"mb_per_s": float(saw.get("mb_per_s", 2.0)), "max_mb": float(saw.get("max_mb", 48))}}
                    )
                leaking = not leaking
                next_saw = now + (on_s if leaking else period - on_s)
            if jit and now >= next_burst:
                rate = float(jit.get("extra_rate", 10.0))
                burst = float(jit.get("burst_s", 5.0))
                gen = LoadGenerator(
                    ctx.bed.url,
                    served.name,
                    rate_per_s=rate,
                    duration_s=burst,
                    timeout_s=5.0,
                    instances=served.instances,
                    expected=ctx.expected,
                    protocol=served.protocol,
                ).start()
                ctx.extra_loads.append(gen)
                next_burst = now + every
        except Exception as exc:
            ctx.note(f"noise driver: {type(exc).__name__}: {exc}")
        ctx.stop.wait(0.5)
    if leaking:
        with contextlib.suppress(Exception):
            replica.clear_fault("leak")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "leak-oom",
            "replica 1 leaks memory (default 4 MB/s, 256 MB limit) until the kernel OOM-kills it",
            100.0,
            {"leak": {"mb_per_s": 4}, "bed": {"memory_limit_mb": 256}},
            _fault("leak"),
        ),
        Scenario(
            "leak-oom-8",
            "replica 1 leaks memory (default 8 MB/s, 256 MB limit) until the kernel OOM-kills it",
            70.0,
            {"leak": {"mb_per_s": 8}, "bed": {"memory_limit_mb": 256}},
            _fault("leak"),
        ),
        Scenario(
            "error-ramp",
            "replica 1's share of 500s rises from 0 to 60 % over 60 s",
            90.0,
            {"error_ramp": {"start": 0.0, "end": 0.6, "over_s": 60}},
            _fault("error_ramp"),
        ),
        Scenario(
            "latency-creep",
            "replica 1's added latency rises from 0 to 4 s (beyond the 3 s proxy timeout) over 90 s",
            110.0,
            {"latency_creep": {"start_ms": 0, "end_ms": 4000, "over_s": 90}},
            _fault("latency_creep"),
        ),
        Scenario(
            "hang",
            "replica 1 stops answering REST requests (the process stays up and logs nothing) until restarted",
            60.0,
            {"hang": {}},
            _fault("hang"),
        ),
        Scenario(
            "hard-kill",
            "replica 1's server process is SIGKILLed without warning",
            45.0,
            {"kill": {"signal": "SIGKILL", "via": "pid"}},
            _hard_kill,
        ),
        Scenario(
            "load-failure",
            "version 3 is published; replica 1 fails to load it and keeps serving version 2",
            60.0,
            {"fail_load": {"min_version": 3}, "publish": {"version": 3, "grace_s": 5.0}},
            _load_failure,
        ),
        Scenario(
            "stale-version",
            "replica 1 crashes and comes back serving version 1 instead of 2",
            60.0,
            {"stale_on_restart": {"version": 1}, "crash": {"after_s": 0.5}},
            _stale_version,
        ),
        Scenario(
            "healthy-noise",
            "nothing fails: log noise on every replica, a GC sawtooth (48 MB) on replica 1, load bursts",
            600.0,
            {
                "noise": {"lines_per_s": 5},
                "sawtooth": {"mb_per_s": 4, "max_mb": 48, "period_s": 30},
                "jitter": {"extra_rate": 10, "burst_s": 5, "every_s": 30},
            },
            _noise_start,
            faulty=None,
            background=_noise_background,
        ),
        Scenario(
            "healthy-noise-fast",
            "nothing fails: log noise, a fast bounded GC sawtooth on replica 1 (40 MB in 2 s, held 1 s, "
            "freed, every 10 s), load bursts",
            600.0,
            {
                "noise": {"lines_per_s": 5},
                "sawtooth": {"mb_per_s": 20, "max_mb": 40, "period_s": 10, "on_s": 3},
                "jitter": {"extra_rate": 10, "burst_s": 5, "every_s": 30},
            },
            _noise_start,
            faulty=None,
            background=_noise_background,
        ),
        Scenario(
            "two-faults",
            "replicas 1 and 2 of the one service fail at once: 1 leaks (8 MB/s, 256 MB limit), 2's share of "
            "500s ramps from 10 to 60 % over 30 s; with max_unavailable 1 the capacity rails let one be "
            "drained at a time",
            90.0,
            {
                "leak": {"mb_per_s": 8},
                "error_ramp": {"start": 0.1, "end": 0.6, "over_s": 30},
                "bed": {"memory_limit_mb": 256},
            },
            _faults_on({1: "leak", 2: "error_ramp"}),
            faulty=(1, 2),
        ),
    ]
}

# --quick, the CI subset: a leak at 8 MB/s under 192 MB (OOM about 20 s after the fault), strategies
# none and watcher, 60 s each: about 2.5 minutes with testbed start-up and teardown
QUICK_SCENARIOS: list[str] = ["leak-oom-8"]
QUICK_STRATEGIES: list[str] = ["none", "watcher"]
QUICK_SECONDS = 60.0
QUICK_SETS: list[tuple[str, str, Any]] = [("bed", "memory_limit_mb", 192)]
