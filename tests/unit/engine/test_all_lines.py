"""A detector that learns from every line (log templates) sees every line on both engine paths."""

from __future__ import annotations

from pathlib import Path

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.model import LogRecord, Target
from watcher.rulepack.compile import load_packs

PACK = """
pack: t
rules:
  - id: new-template
    detector: {kind: templates, params: {warmup: 1m, warmup_lines: 50}}
    predicts: crash
"""


def run(tmp_path: Path, batch: bool) -> list[str]:
    (tmp_path / "p.yaml").write_text(PACK)
    clock = ManualClock(1_700_000_000.0)
    engine = Engine(load_packs([tmp_path / "p.yaml"]), clock)
    target = Target("tfs-1")
    found = []
    for i in range(300):
        clock.advance(1)
        text = f"2024-05-01 10:00:00.000000: I tensorflow_serving/x.cc:1] request {i} served in {i % 7} ms"
        if i == 250:
            text = "2024-05-01 10:00:00.000000: E tensorflow_serving/x.cc:1] something entirely different went wrong"
        record = LogRecord(target, clock.now(), text)
        found += engine.feed_batch([record]) if batch else engine.feed(record)
    assert engine.stats.lines == 300
    return [f.rule_id for f in found if not f.resolved]


def test_novel_template_found_on_both_paths(tmp_path: Path) -> None:
    assert run(tmp_path, batch=False) == ["new-template"]
    assert run(tmp_path, batch=True) == ["new-template"]
