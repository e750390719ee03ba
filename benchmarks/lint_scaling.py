"""Lint time against pack size: N and 4N unknown keys, and the ratio (linear is about 4).

Each error is placed at its YAML node; a lookup that scans the whole mapping per error made a pack
with a few thousand unknown keys lint in minutes (ratio ~16). Run: ``python -m benchmarks.lint_scaling [N]``.
"""

from __future__ import annotations

import sys
import time

from watcher.rulepack import lint_text


def pack_with_unknown_keys(n: int) -> str:
    keys = "\n".join(f"    unknown_{i}: 1" for i in range(n))
    return f"pack: p\nrules:\n  - id: a\n    match: {{log: boom}}\n    predicts: crash\n{keys}\n"


def lint_seconds(n: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs, so one scheduling hiccup does not decide the ratio."""
    text = pack_with_unknown_keys(n)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        errors = lint_text(text, "scaling.yaml")
        best = min(best, time.perf_counter() - started)
        assert len(errors) == n, len(errors)
    return best


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 2000
    small, large = lint_seconds(n), lint_seconds(4 * n)
    print(f"lint {n} unknown keys: {small:.3f}s")
    print(f"lint {4 * n} unknown keys: {large:.3f}s")
    print(f"ratio: {large / small:.2f} (linear: ~4, quadratic: ~16)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
