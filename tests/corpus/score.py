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

``python -m tests.corpus.score`` prints accuracy per class and overall; ``--shapes`` also runs every
line in each of the :data:`SHAPES` real lines arrive in (a Compose prefix, a kubectl timestamp, a
journald prefix, Docker's json-file record, a JSON logger's record) and counts the lines whose
classification differs from the plain line's (it must be none: issue #13, "robust to the shapes").
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
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


SHAPES: dict[str, Callable[[str], str]] = {
    "compose": lambda line: "tfs-1    | " + line,
    "kubectl_timestamps": lambda line: "2023-10-01T12:00:00.123456789Z " + line,
    "journald": lambda line: "Oct 01 12:00:00 host dockerd[123]: " + line,
    "docker_json_file": lambda line: json.dumps(
        {"log": line + "\n", "stream": "stderr", "time": "2023-10-01T12:00:00.123456789Z"}
    ),
    "json_message": lambda line: json.dumps({"message": line}),
}
"""How a line reaches a watcher besides plain: the wrappers :mod:`watcher.parsers.envelope` peels."""


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


def explain(
    lines: Sequence[str], packs: list[Path] | None = None, seed: int = 13
) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    """``(rules, predicts, lifecycle)`` per line, in input order, from one ``watcher rules explain``
    run (the shipped CLI, a subprocess) over all lines in one file, in a fixed shuffled order."""
    from watcher.rules import SHIPPED_RULES

    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "corpus.log"
        log.write_bytes(b"".join(lines[i].encode("utf-8") + b"\n" for i in order))
        pack_args = [str(p) for p in (packs or sorted(SHIPPED_RULES.glob("*.yaml")))]
        out = subprocess.run(
            [sys.executable, "-m", "watcher.cli", "rules", "explain", *pack_args, "--log", str(log)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if len(results) != len(lines):
        raise AssertionError(f"explain gave {len(results)} rows for {len(lines)} lines")
    found: list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [((), (), ())] * len(lines)
    for position, i in enumerate(order):
        r = results[position]
        found[i] = (tuple(r["rules"]), tuple(r["predicts"]), tuple(r["lifecycle"]))
    return found


def classify(
    rows: list[Row], packs: list[Path] | None = None, seed: int = 13, shape: str | None = None
) -> list[Verdict]:
    """Each row's verdict, all rows in one explain run; ``shape`` wraps every line first (:data:`SHAPES`)."""
    wrap = SHAPES[shape] if shape is not None else None
    lines = [wrap(row.line) if wrap is not None else row.line for row in rows]
    return [
        Verdict(row, predicts, lifecycle, rules)
        for row, (rules, predicts, lifecycle) in zip(rows, explain(lines, packs, seed), strict=True)
    ]


def shape_differences(
    rows: list[Row], packs: list[Path] | None = None, plain: list[Verdict] | None = None
) -> dict[str, list[tuple[Verdict, Verdict]]]:
    """Per shape, the rows whose wrapped line is classified otherwise than the plain line:
    (plain verdict, wrapped verdict). Same rules, predictions and lifecycle tags, or it is listed.
    ``plain`` is ``classify(rows, packs)`` when the caller has it already."""
    plain = plain if plain is not None else classify(rows, packs)
    out: dict[str, list[tuple[Verdict, Verdict]]] = {}
    for shape in SHAPES:
        wrapped = classify(rows, packs, shape=shape)
        out[shape] = [
            (p, w)
            for p, w in zip(plain, wrapped, strict=True)
            if (p.rules, p.predicts, p.lifecycle) != (w.rules, w.predicts, w.lifecycle)
        ]
    return out


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
    rows = load(files)
    verdicts = classify(rows)
    print(report(verdicts))
    if "-v" in argv:
        for v in verdicts:
            if not v.correct:
                print(
                    f"MISS {v.row.file}:{v.row.number} label={v.row.label} got predicts={list(v.predicts)} "
                    f"lifecycle={list(v.lifecycle)} rules={list(v.rules)}\n    {v.row.line[:200]}"
                )
    if "--shapes" in argv:
        for shape, differing in shape_differences(rows, plain=verdicts).items():
            print(f"shape {shape:<20} {len(rows) - len(differing):>5} of {len(rows)} lines classified as plain")
            for plain, wrapped in differing if "-v" in argv else ():
                print(
                    f"DIFF {shape} {plain.row.file}:{plain.row.number} plain={list(plain.rules)} "
                    f"wrapped={list(wrapped.rules)}\n    {plain.row.line[:200]}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
