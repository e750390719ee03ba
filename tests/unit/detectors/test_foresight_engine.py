"""Foresight rules through the real engine: a pack in YAML, Samples in, Findings with an ETA out,
and a watcher killed mid-stream and restarted from its store finds the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.model import Finding, Predicts, Sample, Target
from watcher.rulepack.compile import load_packs
from watcher.store import Store

T0 = 1_714_557_600.0
MiB = 2.0**20
PACK = """
pack: foresight-test
rules:
  - id: runway
    forecast: {series: memory_working_set_bytes, limit: memory_limit_bytes, fraction: 0.95, within: 120s}
    predicts: oom
    then: [drain, restart]
  - id: errors-up
    detector: {kind: change, series: error_ratio, params: {direction: up, min_shift: 0.02, warmup: 20}}
    for: 30s
    predicts: http_5xx
  - id: slow-peer
    detector: {kind: peer, series: error_ratio, params: {k: 4}}
    predicts: http_5xx
"""
TARGETS = [Target(f"tfs-{i}", service="m") for i in range(3)]


def _signals(steps: int = 200) -> list[Sample]:
    rng = np.random.default_rng(0)
    out: list[Sample] = []
    for s in range(steps):
        ts = T0 + s * 15.0
        for i, tgt in enumerate(TARGETS):
            leak = 0.3 * MiB * s * 15.0 if i == 0 else 0.0
            out.append(Sample("memory_limit_bytes", ts, 1024 * MiB, target=tgt))
            out.append(Sample("memory_working_set_bytes", ts, 200 * MiB + leak + rng.normal(0, MiB), target=tgt))
            err = 0.01 + (0.1 if i == 2 and s >= 120 else 0.0) + abs(rng.normal(0, 0.002))
            out.append(Sample("error_ratio", ts, err, target=tgt))
    return out


def _run(engine: Engine, clock: ManualClock, signals: list[Sample]) -> list[Finding]:
    out: list[Finding] = []
    for sample in signals:
        if sample.ts > clock.now():
            out.extend(engine.tick())  # the scrape before this one is complete
            clock.set(sample.ts)
        out.extend(engine.feed(sample))
    return out


def _pack(tmp_path: Path) -> Path:
    path = tmp_path / "foresight.yaml"
    path.write_text(PACK)
    return path


def test_engine_turns_forecast_and_change_rules_into_findings_with_eta(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    engine = Engine(load_packs([_pack(tmp_path)]), clock)
    findings = [f for f in _run(engine, clock, _signals()) if not f.resolved]
    runway = [f for f in findings if f.rule_id == "runway"]
    assert [f.target.container for f in runway] == ["tfs-0"]
    assert runway[0].predicts is Predicts.OOM and runway[0].eta_s is not None and 0 < runway[0].eta_s <= 120
    truth = (0.95 * 1024 * MiB - 200 * MiB) / (0.3 * MiB) - (runway[0].ts - T0)
    assert abs(runway[0].eta_s - truth) <= 0.15 * truth
    changes = [f for f in findings if f.rule_id == "errors-up"]
    assert [f.target.container for f in changes] == ["tfs-2"]
    assert T0 + 120 * 15 + 30 <= changes[0].ts <= T0 + 120 * 15 + 5 * 15 + 30
    assert [f.target.container for f in findings if f.rule_id == "slow-peer"] == ["tfs-2"]


def test_engine_killed_mid_stream_restores_detector_state_from_the_store(tmp_path: Path) -> None:
    pack = _pack(tmp_path)
    signals = _signals()
    clock = ManualClock(T0)
    expected = _run(Engine(load_packs([pack]), clock), clock, signals)

    cut = len(signals) // 2
    store = Store(tmp_path / "w.db")
    clock = ManualClock(T0)
    first = Engine(load_packs([pack]), clock, store=store)
    got = _run(first, clock, signals[:cut])
    first.checkpoint()
    store.close()
    del first  # the watcher process dies here

    store = Store(tmp_path / "w.db")
    second = Engine(load_packs([pack]), clock, store=store)
    got += _run(second, clock, signals[cut:])
    store.close()
    assert got == expected
    assert any(f.eta_s is not None for f in got)
