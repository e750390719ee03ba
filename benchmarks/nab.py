"""The full Numenta Anomaly Benchmark run: all 58 files, three profiles, beside the published scores.

Too slow for every CI run (a few minutes on two cores), so it is a benchmark target; CI runs
``python -m testbed eval nab --subset``. ``python -m benchmarks.nab [--data ../shared/nab] [--out DIR] [-j N]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from testbed.eval.nab import run_nab

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "nab"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NAB folder (data/, labels/, ...)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: a temporary one)")
    parser.add_argument("-j", "--processes", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        report = run_nab(args.data, out, processes=args.processes)
        print(report.format())
    total = time.perf_counter() - started
    rate = report.rows / report.detect_seconds
    print(f"\nwall time {total:.1f}s ({rate:,.0f} rows/s detection, {args.processes} processes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
