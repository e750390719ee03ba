"""Every registered detector kind, builtin or foresight, honours the one contract (river-style).

Walks :func:`watcher.detectors.registry.detector_classes`: a new kind is covered the moment it is listed.
A kind whose params have required keys needs an example rule in :data:`EXAMPLES`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from conftest import detector_rule

from watcher.detectors.base import Detector, Observation
from watcher.detectors.registry import build_detector, detector_classes
from watcher.model import Lifecycle, LifecycleKind, LogRecord, Sample, Signal, Target
from watcher.rulepack.schema import AnyRule, EventRule, MatchRule, PromQLRule, ThresholdRule

T0 = 1_714_557_600.0
MiB = 2.0**20
TARGETS = [Target(f"tfs-{i}", service="m") for i in range(3)] + [Target("solo")]


def _examples() -> dict[str, AnyRule]:
    return {
        "match": MatchRule.model_validate(
            {"id": "m", "match": {"log": "OOM"}, "when": {"count": 2, "within": 60}, "predicts": "oom"}
        ),
        "event": EventRule.model_validate({"id": "e", "event": {"kind": "die"}, "predicts": "crash"}),
        "threshold": ThresholdRule.model_validate(
            {"id": "t", "threshold": {"series": "value", "above": 0.5}, "predicts": "oom"}
        ),
        "promql": PromQLRule.model_validate(
            {"id": "value", "promql": "x", "threshold": {"above": 0.5}, "predicts": "http_5xx"}
        ),
        "forecast": detector_rule(
            "forecast", "memory_working_set_bytes", limit="memory_limit_bytes", fraction=0.9, within="5m"
        ),
        "change": detector_rule("change", "value", predicts="http_5xx", warmup=20),
        "peer": detector_rule("peer", "value", predicts="latency"),
        "templates": detector_rule("templates", None, predicts="crash", warmup="1m", warmup_lines=10),
        "predictor": detector_rule("predictor", None, predicts="crash", error_series="value"),
    }


def rule_for(kind: str) -> AnyRule:
    examples = _examples()
    if kind in examples:
        return examples[kind]
    try:
        return detector_rule(kind, "value")
    except Exception as exc:  # a kind with required params
        pytest.fail(f"detector kind {kind!r} needs an example rule in EXAMPLES of test_conformance.py: {exc}")


def stream(seconds: int = 3600, seed: int = 0) -> list[tuple[float, Signal | None]]:
    """A busy hour for four replicas: memory leaks, a shifting series, logs, a restart. None = tick."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, Signal | None]] = []
    for s in range(0, seconds, 5):
        ts = T0 + s
        for i, tgt in enumerate(TARGETS):
            leak = (1 + i) * 0.2 * MiB * (s % 1800)  # resets every half hour
            mem = 500 * MiB + leak + 30 * MiB * ((s % 45) / 45) + rng.normal(0, MiB)
            out.append((ts, Sample("memory_limit_bytes", ts, 1024 * MiB, target=tgt)))
            out.append((ts, Sample("memory_working_set_bytes", ts, float(mem), target=tgt)))
            shift = 0.5 if (i == 1 and s > 1200) else 0.0
            out.append((ts, Sample("value", ts, float(0.1 + shift + rng.normal(0, 0.02)), target=tgt)))
            if s % 10 == 0:
                word = rng.choice(["loaded", "served", "OOM when allocating", "retry"])
                out.append((ts, LogRecord(tgt, ts, f"request {int(rng.integers(1000))} {word} in {s} ms")))
        if s == 1800:
            out.append((ts, Lifecycle(TARGETS[0], ts, LifecycleKind.DIE, exit_code=137)))
            out.append((ts, Lifecycle(TARGETS[0], ts, LifecycleKind.START)))
        if s == 2400:
            out.append((ts, LogRecord(TARGETS[2], ts, "Check failed: never seen before")))
        if s % 15 == 0:
            out.append((ts, None))
    return out


def run(detector: Detector, signals: list[tuple[float, Signal | None]]) -> list[Observation]:
    out: list[Observation] = []
    for ts, sig in signals:
        if sig is None:
            out.extend(detector.on_tick(ts))
        elif isinstance(sig, LogRecord):
            out.extend(detector.on_log(sig))
        elif isinstance(sig, Lifecycle):
            out.extend(detector.on_lifecycle(sig))
        else:
            out.extend(detector.on_sample(sig))
    return out


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(state, allow_nan=False)  # strict JSON: what the store keeps
    back = json.loads(text)
    assert isinstance(back, dict)
    return back


KINDS = sorted(detector_classes())


def test_every_foresight_kind_is_registered() -> None:
    assert {"forecast", "change", "peer", "templates", "predictor"} <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_on_tick_with_no_data_is_harmless(kind: str) -> None:
    d = build_detector(rule_for(kind))
    assert d.on_tick(T0) == [] or all(isinstance(o, Observation) for o in d.on_tick(T0))
    assert roundtrip(d.state()) is not None
    d.restore(roundtrip(d.state()), {})


@pytest.mark.parametrize("kind", KINDS)
def test_state_roundtrips_through_json(kind: str) -> None:
    d = build_detector(rule_for(kind))
    run(d, stream(1200))
    state = d.state()
    again = build_detector(rule_for(kind))
    again.restore(roundtrip(state), {t.key: t for t in TARGETS})
    assert roundtrip(again.state()) == roundtrip(state)


@pytest.mark.parametrize("kind", KINDS)
def test_kill_and_restart_mid_stream_gives_the_same_observations(kind: str) -> None:
    signals = stream()
    whole = build_detector(rule_for(kind))
    expected = run(whole, signals)
    for cut in (len(signals) // 3, 2 * len(signals) // 3):
        first = build_detector(rule_for(kind))
        before = run(first, signals[:cut])
        restarted = build_detector(rule_for(kind))
        restarted.restore(roundtrip(first.state()), {t.key: t for t in TARGETS})
        after = run(restarted, signals[cut:])
        assert before + after == expected, kind
    assert any(o.active for o in expected) or kind in {"event"}, f"{kind}: the stream never exercises it"
