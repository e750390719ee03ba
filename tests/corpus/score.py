"""Score the public log corpus the way a user would check it: `watcher rules explain` over the lines.

Each ``tests/corpus/*.jsonl`` row is ``{"line": ..., "label": ..., "source": ...}``: a real line copied
from a server's source, docs or a public issue thread (``source`` says where), and the class an operator
gives it. All lines go through one ``watcher rules explain`` run in one file, in a fixed shuffled
order, so a line cannot lean on its neighbours (auto-detection stays sticky across a real file too).

A row is classified correctly when:
- ``healthy``: it triggers nothing (no rule, no prediction, no lifecycle tag);
- a lifecycle label (``startup``, ``model_loaded``, ``model_unloaded``): that tag and no prediction;
- a failure label: that prediction, and any other prediction only from ``ALSO_FINE`` (a proxy timeout
  is an upstream failure and latency evidence; an out-of-memory abort is also a death).

``python -m tests.corpus.score`` prints accuracy per class and overall.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).parent
LIFECYCLE = frozenset({"startup", "model_loaded", "model_unloaded"})
FAILURES = frozenset({"oom", "crash", "load_failure", "upstream_failure", "http_5xx", "latency", "unhealthy"})
LABELS = LIFECYCLE | FAILURES | {"healthy"}
ALSO_FINE: dict[str, frozenset[str]] = {
    "upstream_failure": frozenset({"latency", "http_5xx"}),
    "http_5xx": frozenset({"upstream_failure", "latency"}),
    "latency": frozenset({"upstream_failure"}),
    "oom": frozenset({"crash"}),
}


@dataclass(frozen=True)
class Row:
    file: str
    number: int
    line: str
    label: str
    source: str


@dataclass(frozen=True)
class Verdict:
    row: Row
    predicts: tuple[str, ...]
    lifecycle: tuple[str, ...]
    rules: tuple[str, ...]

    @property
    def correct(self) -> bool:
        label = self.row.label
        if label == "healthy":
            return not (self.predicts or self.lifecycle or self.rules)
        if label in LIFECYCLE:
            return label in self.lifecycle and not self.predicts
        return label in self.predicts and set(self.predicts) <= {label} | ALSO_FINE.get(label, frozenset())

    @property
    def healthy_triggered(self) -> bool:
        return self.row.label == "healthy" and bool(self.predicts)


def load(files: Iterable[Path] | None = None) -> list[Row]:
    """Read the corpus; a malformed row is an error naming file and line (the corpus is test data)."""
    rows: list[Row] = []
    for path in sorted(files if files is not None else CORPUS.glob("*.jsonl")):
        for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
                row = Row(path.name, n, obj["line"], obj["label"], obj["source"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: expected {{'line','label','source'}}: {e}") from None
            if row.label not in LABELS:
                raise ValueError(f"{path}:{n}: label {row.label!r} is not one of {sorted(LABELS)}")
            if not row.source.strip():
                raise ValueError(f"{path}:{n}: no provenance")
            if "\n" in row.line:
                raise ValueError(f"{path}:{n}: one log line per row")
            rows.append(row)
    return rows


def classify(rows: list[Row], packs: list[Path] | None = None, seed: int = 13) -> list[Verdict]:
    """Run ``watcher rules explain`` (the shipped CLI, a subprocess) over all rows at once."""
    from watcher.rules import SHIPPED_RULES

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "corpus.log"
        log.write_bytes(b"".join(rows[i].line.encode("utf-8") + b"\n" for i in order))
        pack_args = [str(p) for p in (packs or sorted(SHIPPED_RULES.glob("*.yaml")))]
        out = subprocess.run(
            [sys.executable, "-m", "watcher.cli", "rules", "explain", *pack_args, "--log", str(log)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if len(results) != len(rows):
        raise AssertionError(f"explain gave {len(results)} rows for {len(rows)} lines")
    verdicts: list[Verdict | None] = [None] * len(rows)
    for position, i in enumerate(order):
        r = results[position]
        verdicts[i] = Verdict(rows[i], tuple(r["predicts"]), tuple(r["lifecycle"]), tuple(r["rules"]))
    return [v for v in verdicts if v is not None]


def report(verdicts: list[Verdict]) -> str:
    total: Counter[str] = Counter(v.row.label for v in verdicts)
    right: Counter[str] = Counter(v.row.label for v in verdicts if v.correct)
    lines = [f"{'class':<18}{'right':>7}{'of':>5}{'accuracy':>10}"]
    for label in sorted(total):
        lines.append(f"{label:<18}{right[label]:>7}{total[label]:>5}{right[label] / total[label]:>10.1%}")
    n, ok = sum(total.values()), sum(right.values())
    lines.append(f"{'overall':<18}{ok:>7}{n:>5}{ok / max(n, 1):>10.1%}")
    lines.append(f"healthy lines that trigger a failure class: {sum(v.healthy_triggered for v in verdicts)}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv if not a.startswith("-")] or None
    verdicts = classify(load(files))
    print(report(verdicts))
    if "-v" in argv:
        for v in verdicts:
            if not v.correct:
                print(
                    f"MISS {v.row.file}:{v.row.number} label={v.row.label} got predicts={list(v.predicts)} "
                    f"lifecycle={list(v.lifecycle)} rules={list(v.rules)}\n    {v.row.line[:200]}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
