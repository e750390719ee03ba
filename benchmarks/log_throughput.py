"""How fast the watcher matches log lines, next to ``grep -E`` with the same patterns.

Writes a deterministic file of TF Serving + Nginx lines (mostly healthy, ~1 % failure lines taken
from real issue threads, see ``tests/unit/parsers/samples``), then measures in one run:

* ``PatternSet.match`` line by line (what the live driver does for each new line);
* ``PatternSet.match_block`` on 1 MiB blocks (what replay does);
* ``LC_ALL=C grep -E -c -e p1 -e p2 ... file`` (counting, so grep reads the whole file: with its
  output on ``/dev/null`` GNU grep stops at the first match, which is also shown for reference).

The goal is a rate of at least half grep's. Rule packs call :func:`run` with their own patterns.
Then ``Engine.feed_batch`` end to end with the shipped packs, next to the same grep. On a shared
machine a single timing says more about the neighbours than about the code, so ``--repeat N``
(default 3) times the engine and grep N times each, alternately, and keeps each one's best.
``python -m benchmarks.log_throughput [--lines N] [--backend auto|hyperscan|re2|python] [--repeat N] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from watcher.matcher import PatternSet, PatternSpec
from watcher.rules import SHIPPED_RULES

REPRESENTATIVE: list[PatternSpec] = [
    PatternSpec("tfs.oom", "Resource exhausted: OOM when allocating"),
    PatternSpec("tfs.alloc-10pct", r"Allocation of [0-9]+ exceeds [0-9]+% of (free )?system memory", True),
    PatternSpec("tfs.load-failed", r"Loading servable: \{name: [^ ]+ version: [0-9]+\} failed", True),
    PatternSpec("tfs.no-versions", "No versions of servable"),
    PatternSpec("tfs.no-savedmodel", "Could not find SavedModel .pb or .pbtxt"),
    PatternSpec("tfs.metagraph", "Could not find meta graph def matching supplied tags"),
    PatternSpec("tfs.failed-load", "Failed to load servable"),
    PatternSpec("tfs.bad-alloc", "std::bad_alloc"),
    PatternSpec("tfs.status-fail", "Status: fail"),
    PatternSpec("tfs.unloaded", "Done unloading servable version"),
    PatternSpec("tfs.loaded", r"Successfully loaded servable version \{name: ", True),
    PatternSpec("tfs.fatal", r"^[0-9-]+ [0-9:.]+: F ", True),
    PatternSpec("tfs.killed", "tf_serving_entrypoint.sh: line [0-9]+: +[0-9]+ Killed", True),
    PatternSpec("tfs.deadline", "deadline exceeded", ignore_case=True),
    PatternSpec("nginx.timeout", "upstream timed out (110: Connection timed out)"),
    PatternSpec("nginx.refused", "connect() failed (111: Connection refused) while connecting to upstream"),
    PatternSpec("nginx.no-live", "no live upstreams while connecting to upstream"),
    PatternSpec("nginx.premature", "upstream prematurely closed connection"),
    PatternSpec("nginx.disabled", "upstream server temporarily disabled"),
    PatternSpec("nginx.5xx", r'" 5[0-9][0-9] [0-9]+ "', True),
    PatternSpec("nginx.slow", r" [0-9]+ [1-9][0-9]\.[0-9]+$", True),
    PatternSpec("nginx.worker-exit", "exited on signal"),
    PatternSpec("gunicorn.sigkill", "was sent SIGKILL! Perhaps out of memory?"),
    PatternSpec("gunicorn.timeout", "worker timeout", ignore_case=True),
    PatternSpec("uvicorn.asgi", "Exception in ASGI application"),
    PatternSpec("kernel.oom", r"(Memory cgroup out of memory|Out of memory): Kill(ed)? process [0-9]+", True),
    PatternSpec("kernel.oom-kill", "oom-kill:constraint="),
    PatternSpec("grpc.unavailable", "StatusCode.UNAVAILABLE"),
    PatternSpec("grpc.exhausted", "StatusCode.RESOURCE_EXHAUSTED"),
    PatternSpec("docker.oom", r"^[^ ]+ container oom [0-9a-f]+", True),
]

SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "unit" / "parsers" / "samples"
"""Real failure lines from public issue threads (the parsers' test samples)."""


def interesting_lines() -> list[str]:
    """Every sample line of the TF Serving, Nginx, gunicorn, kernel and raw sample files."""
    lines: list[str] = []
    for kind in ("tfserving", "nginx", "gunicorn", "kernel", "raw", "grpc"):
        path = SAMPLES / f"{kind}.log"
        if path.exists():
            text = path.read_text(encoding="utf-8")
            lines += [line for line in text.splitlines() if line and not line.startswith("#")]
    return lines or ["2024-05-01 10:00:00.000000: E x.cc:1] Resource exhausted: OOM when allocating tensor"]


def _healthy(rng: random.Random, n: int) -> str:
    sec = n // 1000
    hms = f"{10 + sec // 3600 % 12:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
    stamp = f"2024-05-01 {hms}.{rng.randrange(10**6):06d}"
    pick = rng.random()
    if pick < 0.45:
        ms = rng.randrange(3, 90)
        return (
            f'127.0.0.1 - - [01/May/2024:{hms} +0000] "POST /v1/models/m:predict HTTP/1.1" '
            f'200 {rng.randrange(80, 400)} "-" "python-requests/2.31.0" '
            f"127.0.0.1:{rng.randrange(8501, 8504)} 200 0.0{ms:02d}"
        )
    if pick < 0.55:
        return (
            f'127.0.0.1 - - [01/May/2024:{hms} +0000] "GET /v1/models/m HTTP/1.1" '
            f'200 {rng.randrange(150, 170)} "-" "curl/8.5.0" 127.0.0.1:8501 200 0.001'
        )
    if pick < 0.8:
        return (
            f"{stamp}: I tensorflow_serving/servables/tensorflow/predict_util.cc:{rng.randrange(60, 200)}] "
            f"Prediction request for model m version {rng.randrange(1, 4)} served"
        )
    if pick < 0.9:
        return (
            f"{stamp}: I external/org_tensorflow/tensorflow/core/common_runtime/bfc_allocator.cc:"
            f"{rng.randrange(600, 1100)}] InUse at 7f382e1{rng.randrange(16**5):05x} "
            f"of size {rng.randrange(256, 10**7)} next {rng.randrange(1000)}"
        )
    return (
        f"{stamp}: I tensorflow_serving/model_servers/server_core.cc:{rng.randrange(400, 600)}] "
        "Polling the file system for new versions of servable m"
    )


def generate(path: Path, lines: int, seed: int = 42) -> int:
    """Write ``lines`` lines (~1 % interesting) to ``path``; returns the number of interesting ones."""
    rng = random.Random(seed)
    failures = interesting_lines()
    interesting = 0
    with path.open("w", encoding="utf-8") as out:
        for n in range(lines):
            if rng.random() < 0.01:
                out.write(rng.choice(failures))
                interesting += 1
            else:
                out.write(_healthy(rng, n))
            out.write("\n")
    return interesting


_ERE_CLASSES = {r"\d": "[0-9]", r"\D": "[^0-9]", r"\s": "[[:space:]]", r"\S": "[^[:space:]]", r"\w": "[[:alnum:]_]"}


def to_ere(spec: PatternSpec) -> str:
    """The same pattern for ``grep -E`` in the C locale (literals escaped, Python-only syntax mapped)."""
    if spec.is_regex:
        text = spec.pattern.replace("(?:", "(")
        for py, ere in _ERE_CLASSES.items():
            text = text.replace(py, ere)
    else:
        text = re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", spec.pattern)
    if spec.ignore_case:
        text = "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in text)
    return text


@dataclass(frozen=True, slots=True)
class Result:
    lines: int
    backend: str
    match_lines_per_s: float
    block_lines_per_s: float
    grep_lines_per_s: float
    grep_devnull_s: float
    matched_lines: int
    grep_matched_lines: int


def _time_match(ps: PatternSet, path: Path) -> tuple[float, int]:
    matched = 0
    start = time.perf_counter()
    with path.open("rb") as f:
        for line in f:
            if ps.match(line):
                matched += 1
    return time.perf_counter() - start, matched


def _time_block(ps: PatternSet, path: Path, block_size: int = 1 << 20) -> tuple[float, int]:
    matched = 0
    start = time.perf_counter()
    with path.open("rb") as f:
        tail = b""
        while True:
            chunk = f.read(block_size)
            if not chunk:
                break
            data = tail + chunk
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            matched += len(ps.match_block(data[:cut]))
        if tail:
            matched += len(ps.match_block(tail))
    return time.perf_counter() - start, matched


def run(patterns: Sequence[PatternSpec] = REPRESENTATIVE, lines: int = 1_000_000, backend: str = "auto") -> Result:
    """Generate the file, match it every way, and print the figures."""
    grep = shutil.which("grep")
    if grep is None:
        raise SystemExit("grep not found")
    ps = PatternSet(patterns, backend=backend)
    args = [grep, "-E"]
    for spec in patterns:
        args += ["-e", to_ere(spec)]
    env = {**os.environ, "LC_ALL": "C"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "serving.log"
        interesting = generate(path, lines)
        size = path.stat().st_size
        t_match, matched = _time_match(ps, path)
        t_block, block_matched = _time_block(ps, path)
        start = time.perf_counter()
        out = subprocess.run([*args, "-c", str(path)], env=env, capture_output=True, text=True, check=False)
        t_grep = time.perf_counter() - start
        grep_matched = int(out.stdout.strip() or 0)
        start = time.perf_counter()
        with open(os.devnull, "w") as devnull:
            subprocess.run([*args, str(path)], env=env, stdout=devnull, check=False)
        t_devnull = time.perf_counter() - start
    result = Result(
        lines, ps.backend, lines / t_match, lines / t_block, lines / t_grep, t_devnull, matched, grep_matched
    )
    assert matched == block_matched, (matched, block_matched)
    print(f"file: {lines:,} lines, {size / 2**20:.1f} MiB, {interesting:,} interesting lines; {len(ps)} patterns")
    print(f"backend: {ps.backend}")
    print(
        f"PatternSet.match (per line): {result.match_lines_per_s:>12,.0f} lines/s  "
        f"({t_match:.2f}s, {matched:,} matching lines)"
    )
    print(f"PatternSet.match_block     : {result.block_lines_per_s:>12,.0f} lines/s  ({t_block:.2f}s)")
    print(
        f"LC_ALL=C grep -E -c        : {result.grep_lines_per_s:>12,.0f} lines/s  "
        f"({t_grep:.2f}s, {grep_matched:,} matching lines)"
    )
    print(f"LC_ALL=C grep -E >/dev/null: {t_devnull:.3f}s (GNU grep stops at the first match here)")
    print(
        f"ratio per-line / grep: {result.match_lines_per_s / result.grep_lines_per_s:.2f}   "
        f"ratio block / grep: {result.block_lines_per_s / result.grep_lines_per_s:.2f}   (goal >= 0.5)"
    )
    if matched != grep_matched:
        print(f"WARNING: grep counted {grep_matched} matching lines, PatternSet {matched}")
    return result


RULES_DIR = SHIPPED_RULES


def pack_patterns(packs_dir: Path = RULES_DIR) -> list[PatternSpec]:
    """The log patterns of the shipped packs, as the engine compiles them."""
    from watcher.rulepack.compile import load_packs
    from watcher.rulepack.schema import MatchRule

    return [
        PatternSpec(r.id, r.match.log, r.match.regex, r.match.ignore_case)
        for pack in load_packs([packs_dir])
        for r in pack.rules
        if isinstance(r, MatchRule)
    ]


@dataclass(frozen=True, slots=True)
class EngineResult:
    lines: int
    findings: int
    engine_lines_per_s: list[float]  # every repetition, in order
    grep_lines_per_s: list[float]  # grep -E -c on the same file, alternating with the engine

    @property
    def ratio(self) -> float:
        """Best engine rate over best grep rate: each at its least disturbed moment."""
        return max(self.engine_lines_per_s) / max(self.grep_lines_per_s)


def engine_rate(
    lines: int,
    packs_dir: Path = RULES_DIR,
    batch: int = 512,
    repeat: int = 3,
    grep_patterns: Sequence[PatternSpec] = (),
) -> EngineResult:
    """End to end: LogRecords through ``Engine.feed_batch`` with the shipped packs (scan, then
    parse and classify the candidates, windows and rule state), as the live driver runs it.

    Each repetition is a fresh engine on the same records (same findings every time); with
    ``grep_patterns``, ``grep -E -c`` runs on the same file after each, for the ratio."""
    from watcher.clock import ManualClock
    from watcher.engine import Engine
    from watcher.model import LogRecord, Target
    from watcher.rulepack.compile import load_packs

    t0 = 1_714_557_600.0
    packs = load_packs([packs_dir])
    targets = [Target(f"tfs-{i}", service="m") for i in range(4)]
    grep = shutil.which("grep")
    args = [grep or "grep", "-E", "-c"]
    for spec in grep_patterns:
        args += ["-e", to_ere(spec)]
    env = {**os.environ, "LC_ALL": "C"}
    rates: list[float] = []
    grep_rates: list[float] = []
    findings = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "serving.log"
        generate(path, lines)
        text = path.read_text(errors="replace").splitlines()
        # Records are built before timing: in the live driver the sources build them, in other threads.
        batches = [
            [
                LogRecord(targets[(i + j) % 4], t0 + 0.05 * (i // batch), line)
                for j, line in enumerate(text[i : i + batch])
            ]
            for i in range(0, len(text), batch)
        ]
        for _ in range(max(1, repeat)):
            clock = ManualClock(t0)
            engine = Engine(packs, clock)  # compiled before timing, as the live driver does at start
            start = time.perf_counter()
            for records in batches:
                engine.feed_batch(records)
                clock.advance(0.05)
                engine.tick()
            elapsed = time.perf_counter() - start
            rates.append(len(text) / elapsed)
            findings = sum(engine.stats.findings.values())
            if grep_patterns and grep is not None:
                start = time.perf_counter()
                subprocess.run([*args, str(path)], env=env, capture_output=True, check=False)
                grep_rates.append(len(text) / (time.perf_counter() - start))
    result = EngineResult(len(text), findings, rates, grep_rates)
    print(
        f"Engine.feed_batch (shipped packs, end to end): {max(rates):>12,.0f} lines/s best of {len(rates)}  "
        f"({findings} findings; runs: {', '.join(f'{r / 1e6:.2f}' for r in rates)} M)"
    )
    if grep_rates:
        print(
            f"LC_ALL=C grep -E -c, alternating with it   : {max(grep_rates):>12,.0f} lines/s "
            f"best of {len(grep_rates)}  "
            f"(runs: {', '.join(f'{r / 1e6:.2f}' for r in grep_rates)} M)"
        )
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--backend", default="auto")
    parser.add_argument(
        "--patterns", choices=("packs", "representative"), default="packs", help="shipped packs' patterns (default)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="engine and grep timings, alternating; best kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ns = parser.parse_args(argv)
    patterns = pack_patterns() if ns.patterns == "packs" else REPRESENTATIVE
    result = run(patterns, ns.lines, ns.backend)
    engine = engine_rate(ns.lines, repeat=ns.repeat, grep_patterns=patterns)
    print(
        f"ratio engine / grep: {engine.ratio:.2f}   (best of each; per run: "
        + ", ".join(f"{e / g:.2f}" for e, g in zip(engine.engine_lines_per_s, engine.grep_lines_per_s, strict=False))
        + ")"
    )
    if ns.json is not None:
        out = {
            "lines": ns.lines,
            "patterns": len(patterns),
            "backend": result.backend,
            "match_lines_per_s": round(result.match_lines_per_s),
            "match_block_lines_per_s": round(result.block_lines_per_s),
            "grep_lines_per_s": round(result.grep_lines_per_s),
            "engine_findings": engine.findings,
            "engine_lines_per_s": [round(r) for r in engine.engine_lines_per_s],
            "engine_grep_lines_per_s": [round(r) for r in engine.grep_lines_per_s],
            "engine_vs_grep": round(engine.ratio, 3),
            "match_block_vs_grep": round(result.block_lines_per_s / result.grep_lines_per_s, 3),
            "match_vs_grep": round(result.match_lines_per_s / result.grep_lines_per_s, 3),
        }
        ns.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
