"""Log-template novelty and rate, with a bounded memory under a flood of random lines."""

from __future__ import annotations

import random
import string

from conftest import detector_rule

from watcher.detectors.base import Observation
from watcher.detectors.templates import TemplateDetector, TemplateMiner
from watcher.model import LogRecord, Target

T0 = 1_714_557_600.0
TGT = Target("tfs-1", service="m")
NORMAL = [
    "Successfully loaded servable version {name: m version: %d}",
    "Request %d served in %d ms",
    "Reading SavedModel from: /models/m/%d",
]


def _detector(**params: object) -> TemplateDetector:
    p = {"warmup": "5m", "warmup_lines": 100, "hold": "2m", **params}
    return TemplateDetector(detector_rule("templates", None, predicts="crash", **p))


def _healthy(d: TemplateDetector, seconds: int, start: float = 0.0, per_s: int = 2) -> list[Observation]:
    out: list[Observation] = []
    rng = random.Random(1)
    for s in range(seconds):
        for _ in range(per_s):
            line = rng.choice(NORMAL).replace("%d", str(rng.randint(1, 9999)))
            out.extend(d.on_log(LogRecord(TGT, T0 + start + s, line)))
        out.extend(d.on_tick(T0 + start + s))
    return out


def test_miner_generalises_variable_fields() -> None:
    m = TemplateMiner(similarity=0.5, max_templates=100, max_line=512, max_tokens=48)
    a, created_a = m.add("Loading model half_plus_two from /models/1")
    b, created_b = m.add("Loading model resnet from /models/2")
    assert created_a and not created_b and a == b
    assert m.text(a) == "Loading model <*> from <*>"


def test_new_template_after_warmup_is_flagged_then_expires() -> None:
    d = _detector()
    assert not any(o.active for o in _healthy(d, 600))
    obs = d.on_log(LogRecord(TGT, T0 + 600, "Check failed: allocator.cc:42 NaN in tensor"))
    assert obs and obs[0].active and "new log template" in obs[0].evidence
    later = _healthy(d, 200, start=601)
    assert any(not o.active and o.target == TGT for o in later)  # hold of 2m expired
    # the same template again is no longer new
    assert not any(o.active for o in d.on_log(LogRecord(TGT, T0 + 900, "Check failed: x.cc:7 NaN in tensor")))


def test_novelty_during_warmup_is_not_flagged() -> None:
    d = _detector()
    assert not any(o.active for o in d.on_log(LogRecord(TGT, T0, "something unusual at start")))


def test_rate_jump_is_flagged() -> None:
    d = _detector(rate_interval="1m", min_count=20, rate_ratio=5)
    for minute in range(20):  # a steady 3 warnings a minute, plus healthy noise
        _healthy(d, 60, start=minute * 60.0, per_s=1)
        for i in range(3):
            d.on_log(LogRecord(TGT, T0 + minute * 60 + 10 * i, f"Retrying request {i} after timeout 30s"))
    fired: list[Observation] = []
    base = 20 * 60.0
    for i in range(100):  # the warning bursts: 100 in a minute
        fired.extend(d.on_log(LogRecord(TGT, T0 + base + i * 0.5, f"Retrying request {i} after timeout 30s")))
    fired.extend(d.on_tick(T0 + base + 60))
    assert any(o.active and "rate jumped" in o.evidence for o in fired)


def test_random_lines_keep_memory_bounded() -> None:
    d = _detector(max_templates=200, max_line=200)
    rng = random.Random(3)
    alphabet = string.ascii_letters
    for i in range(20_000):
        words = ["".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(rng.randint(1, 100))]
        d.on_log(
            LogRecord(TGT, T0 + i * 0.01, " ".join(words) + "x" * rng.randint(0, 100_000 if i % 1000 == 0 else 10))
        )
        if i % 500 == 0:
            d.on_tick(T0 + i * 0.01)
    assert len(d.miner.templates) <= 200
    assert sum(len(g) for g in d.miner.groups.values()) == len(d.miner.templates)
    assert all(len(t) <= 48 for t in d.miner.templates.values())
    assert all(len(r.ewma) <= 200 and len(r.counts) <= 200 for r in d._rates.values())
