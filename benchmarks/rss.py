"""What ``watcher run`` costs in memory before it watches anything, per set of rule packs (issue #18).

Starts the real ``python -m watcher.cli run`` as a subprocess for each configuration: no containers
(a label selector nothing carries), Docker stats off, no Prometheus, the API on a free loopback
port and a store in a temporary directory. Once ``/healthz`` answers it waits a moment for the
threads to settle, then reads the process's ``VmRSS`` and ``VmHWM`` from ``/proc/<pid>/status`` and,
from ``-X importtime``'s report on stderr, how many modules it imported and which heavy packages
among them. Nothing in the product is added for this: ``/proc`` and the interpreter say it all.

Configurations: ``none`` (no packs), ``no-learned`` (the shipped packs minus those with a rule whose
detector learns: the failure predictor), ``shipped`` (every shipped pack, the default).

    python -m benchmarks.rss                 # all three, a table
    python -m benchmarks.rss --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from benchmarks.procstat import status_kb
from testbed.ports import free_port
from watcher.rules import shipped_packs

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("river", "scipy", "numpy", "pandas", "sklearn", "docker", "prometheus_client", "apscheduler", "hyperscan")
"""Top-level packages worth naming when they are imported (the rest is counted, not named)."""
LEARNED_KINDS = ("predictor",)
"""Detector kinds that learn (``no-learned`` drops packs that use them)."""


@dataclass(frozen=True, slots=True)
class Measurement:
    config: str
    packs: list[str]
    rss_mb: float
    hwm_mb: float
    modules: int
    heavy: list[str]
    startup_s: float


def configurations() -> dict[str, list[Path]]:
    shipped = shipped_packs()
    no_learned = [p for p in shipped if not any(f"kind: {k}" in p.read_text() for k in LEARNED_KINDS)]
    return {"none": [], "no-learned": no_learned, "shipped": shipped}


def _imports(stderr: str) -> tuple[int, list[str]]:
    """Module count and the heavy top-level packages among them, from ``-X importtime`` lines
    (``import time: self | cumulative | <indent>name``)."""
    names = [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    names = [n for n in names if n and n != "imported package"]
    tops = {n.split(".")[0] for n in names}
    return len(names), [h for h in HEAVY if h in tops]


def measure(name: str, packs: list[Path], settle_s: float = 3.0, timeout_s: float = 60.0) -> Measurement:
    """One ``watcher run`` with these packs, measured once it is healthy, then stopped (SIGTERM)."""
    with tempfile.TemporaryDirectory(prefix="watcher-rss-") as tmp:
        port = free_port()
        config = {
            "label_selector": [f"watcher.rss-benchmark={os.getpid()}-matches-nothing"],
            "stats_interval_s": 0,
            "packs": [str(p) for p in packs],
            "store": str(Path(tmp) / "watcher.db"),
            "api_listen": f"127.0.0.1:{port}",
            "log_level": "warning",
        }
        cfg = Path(tmp) / "watcher.yaml"
        cfg.write_text(yaml.safe_dump(config))
        err_path = Path(tmp) / "stderr"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        start = time.monotonic()
        with err_path.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-X", "importtime", "-m", "watcher.cli", "run", "--config", str(cfg)],
                cwd=tmp,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                startup = _wait_healthy(proc, port, start, timeout_s)
                time.sleep(settle_s)
                rss = status_kb(proc.pid, "VmRSS")
                hwm = status_kb(proc.pid, "VmHWM")
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        modules, heavy = _imports(err_path.read_text())
    return Measurement(name, [p.stem for p in packs], rss / 1024, hwm / 1024, modules, heavy, startup)


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, start: float, timeout_s: float) -> float:
    url = f"http://127.0.0.1:{port}/healthz"
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"watcher run exited with {proc.returncode} before /healthz answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"/healthz did not answer within {timeout_s:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", choices=sorted(configurations()), help="default: all")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after /healthz before reading RSS")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    wanted = args.config or list(configurations())
    results = [measure(name, packs, args.settle) for name, packs in configurations().items() if name in wanted]
    print(f"{'config':<11} {'RSS MB':>7} {'peak MB':>8} {'modules':>8} {'start s':>8}  heavy imports / packs")
    for m in results:
        print(
            f"{m.config:<11} {m.rss_mb:7.1f} {m.hwm_mb:8.1f} {m.modules:8d} {m.startup_s:8.2f}  "
            f"{','.join(m.heavy) or '-'} / {len(m.packs)} packs"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
