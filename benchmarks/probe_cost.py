"""What the active probes cost (issue #17: at most 2 requests per replica per second, under 1 % of
a core for 10 replicas), measured against real simulators.

Starts ``--replicas`` TF Serving simulators (testbed/simulator/tfserving_sim.py, stdlib only) as
host processes on free loopback ports, then runs the product's :class:`ProbesSource` at the
shipped period and timeout for ``--seconds``, its samples fed to an engine with the shipped
foresight pack (as ``watcher run`` would). Reported: probes per replica per second (counted by the
source; one probe is one request), and this process's CPU time over the window as a share of one core (the sims run
in their own processes and are not counted). ``--hang N`` hangs N replicas halfway through, to
show the cost does not grow when replicas stop answering. The simulators are ended by their PIDs.

    python -m benchmarks.probe_cost                  # 10 replicas, 30 s
    python -m benchmarks.probe_cost --hang 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.procstat import machine
from testbed.ports import free_port
from watcher.clock import WallClock
from watcher.config import Settings
from watcher.engine import Engine
from watcher.inventory import Snapshot, WatchedContainer
from watcher.model import Target
from watcher.rulepack.compile import load_packs
from watcher.sources.base import SignalQueue
from watcher.sources.probes import ProbesSource, tfserving_status

ROOT = Path(__file__).resolve().parent.parent
SIM = ROOT / "testbed" / "simulator" / "tfserving_sim.py"
MODEL = "half_plus_two"


class _Inventory:
    """The inventory's snapshot of the simulated replicas, as the probes read it."""

    engine_names = ("local",)

    def __init__(self, containers: list[WatchedContainer]) -> None:
        self.containers = containers

    def snapshot(self) -> Snapshot:
        return Snapshot({"local": {c.id: c for c in self.containers}}, {"local": True})

    def engine_states(self) -> dict[str, Any]:
        return {}


def _start_sims(n: int, tmp: Path) -> list[tuple[subprocess.Popen[bytes], str, str]]:
    models = tmp / "models"
    shutil.copytree(ROOT / "models", models)
    env = {k: v for k, v in os.environ.items() if k != "SIM_FAULTS"}
    sims = []
    for i in range(n):
        port, admin = free_port(), free_port()
        args = [
            sys.executable,
            str(SIM),
            f"--rest_api_port={port}",
            f"--model_name={MODEL}",
            f"--model_base_path={models / MODEL}",
            f"--admin_port={admin}",
            "--bind_address=127.0.0.1",
        ]
        with open(tmp / f"sim-{i}.log", "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=out, env=env, cwd=tmp)
        sims.append((proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{admin}"))
    deadline = time.monotonic() + 30
    for _, address, _ in sims:
        while True:
            try:
                tfserving_status(address, MODEL, 1.0)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    return sims


def run(replicas: int, seconds: float, hang: int) -> dict[str, Any]:
    shipped = Settings()  # the code defaults, which equal deploy/watcher.yaml
    interval, timeout = shipped.probe_interval_s, shipped.probe_timeout_s
    with tempfile.TemporaryDirectory(prefix="probe-cost-") as tmpdir:
        sims = _start_sims(replicas, Path(tmpdir))
        try:
            containers = [
                WatchedContainer(
                    engine="local",
                    id=f"sim-{i}",
                    name=f"tfs-{i}",
                    target=Target(f"tfs-{i}", service="bench"),
                    labels={},
                    upstream=address,
                    model=MODEL,
                    running=True,
                    health=None,
                    started_at="t0",
                    tty=False,
                )
                for i, (_, address, _) in enumerate(sims)
            ]
            queue = SignalQueue()
            source = ProbesSource(queue, inventory=_Inventory(containers), interval_s=interval, timeout_s=timeout)  # type: ignore[arg-type]
            engine = Engine(load_packs([ROOT / "watcher" / "rules" / "foresight.yaml"]), WallClock())
            stop = threading.Event()
            found: list[str] = []

            def drain() -> None:
                while not stop.is_set():
                    batch = queue.get_batch(timeout_s=0.1)
                    if batch:
                        found.extend(f.target.container for f in engine.feed_batch([e.signal for e in batch]))

            consumer = threading.Thread(target=drain, daemon=True)
            consumer.start()
            source.start()
            time.sleep(2 * interval)  # first round out: measure the steady state

            def round_started() -> tuple[int, float, float]:
                """Just after a round started: (probes sent, CPU time, monotonic time), so the window
                holds whole rounds and the rate is not skewed by where the window cuts them."""
                rounds = source.rounds
                while source.rounds == rounds:
                    time.sleep(0.002)
                return source.sent, time.process_time(), time.monotonic()

            sent0, cpu0, t0 = round_started()
            hung_at = None
            while time.monotonic() - t0 < seconds:
                if hang and hung_at is None and time.monotonic() - t0 >= seconds / 2:
                    for _, _, admin in sims[:hang]:
                        req = urllib.request.Request(f"{admin}/faults", data=b'{"hang": {}}', method="POST")
                        urllib.request.urlopen(req, timeout=2).close()
                    hung_at = time.monotonic() - t0
                time.sleep(0.1)
            sent1, cpu1, t1 = round_started()
            sent, cpu, elapsed = sent1 - sent0, cpu1 - cpu0, t1 - t0
            source.stop()
            stop.set()
            consumer.join(timeout=5)
            return {
                "date": time.strftime("%Y-%m-%d"),
                "machine": machine(),
                "replicas": replicas,
                "seconds": round(elapsed, 2),
                "probe_interval_s": interval,
                "probe_timeout_s": timeout,
                "hung_replicas": hang,
                "hung_at_s": None if hung_at is None else round(hung_at, 2),
                "probes": sent,
                "skipped_turns": source.skipped,
                "requests_per_replica_per_s": round(sent / replicas / elapsed, 3),
                "cpu_share_of_one_core_pct": round(100 * cpu / elapsed, 3),
                "findings_on": sorted(set(found)),
            }
        finally:
            for proc, _, _ in sims:
                proc.kill()
                proc.wait(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hang", type=int, default=0, help="replicas to hang halfway through")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.replicas, args.seconds, args.hang)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
