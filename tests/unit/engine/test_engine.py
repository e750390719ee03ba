"""The engine turns signals into findings the way a user reads the rule pack, on injected time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.model import Lifecycle, LifecycleKind, LifecycleTag, LogRecord, Predicts, Sample, Target
from watcher.rulepack.compile import load_packs
from watcher.store import Store

PACK = """
pack: test
rules:
  - id: oom-precursor
    match: {log: 'OOM when allocating', source: tfserving}
    when: {count: 2, within: 60s}
    predicts: oom
  - id: fatal-check
    match: {log: 'Check failed', level: [fatal]}
    predicts: crash
  - id: upstream-timeout
    match: {log: 'upstream timed out', source: nginx}
    predicts: upstream_failure
  - id: model-loaded
    match: {log: 'Successfully loaded servable version'}
    lifecycle: model_loaded
  - id: oom-killed
    event: {kind: die, exit_codes: [137]}
    predicts: oom
  - id: restart-loop
    event: {kind: restart, count: 3, within: 10m}
    predicts: crash
  - id: memory-high
    threshold: {series: memory_ratio, above: 0.9}
    for: 30s
    keep_firing_for: 1m
    predicts: oom
"""

T0 = 1_714_557_600.0
REPLICA = Target("tfs-1", service="m")
OTHER = Target("tfs-2", service="m")
NGINX = Target("nginx")


def glog(level: str, text: str) -> str:
    return f"2024-05-01 10:00:00.123456: {level} external/org_tensorflow/tensorflow/core/x.cc:1] {text}"


OOM = glog("W", "OP_REQUIRES failed at matmul_op.cc:205 : RESOURCE_EXHAUSTED: OOM when allocating tensor")


@pytest.fixture
def pack_file(tmp_path: Path) -> Path:
    path = tmp_path / "test.yaml"
    path.write_text(PACK)
    return path


def make(pack_file: Path, store: Store | None = None, clock: ManualClock | None = None) -> Engine:
    return Engine(load_packs([pack_file]), clock or ManualClock(T0), store=store)


def line(engine: Engine, target: Target, text: str) -> list:  # type: ignore[type-arg]
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    return engine.feed(LogRecord(target=target, ts=clock.now(), message=text))


def test_count_within_window_fires_once_on_the_second_line(pack_file: Path) -> None:
    engine = make(pack_file)
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    assert line(engine, REPLICA, OOM) == []
    clock.advance(20)
    [finding] = line(engine, REPLICA, OOM)
    assert finding.predicts is Predicts.OOM and finding.rule_id == "oom-precursor"
    assert finding.target == REPLICA and not finding.resolved
    assert "OOM when allocating" in finding.evidence[0]
    clock.advance(5)
    assert line(engine, REPLICA, OOM) == []  # already firing: no duplicate finding


def test_lines_further_apart_than_the_window_do_not_fire(pack_file: Path) -> None:
    engine = make(pack_file)
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    for _ in range(4):
        assert line(engine, REPLICA, OOM) == []
        clock.advance(61)
        assert engine.tick() == []


def test_targets_are_counted_separately(pack_file: Path) -> None:
    engine = make(pack_file)
    assert line(engine, REPLICA, OOM) == []
    assert line(engine, OTHER, OOM) == []


def test_source_and_level_filters(pack_file: Path) -> None:
    engine = make(pack_file)
    # the tfserving rule ignores the same words in an nginx line
    nginx_line = '2024/05/01 10:00:00 [error] 31#31: *5 OOM when allocating, client: 127.0.0.1, server: , request: "x"'
    for _ in range(3):
        assert line(engine, NGINX, nginx_line) == []
    # a "Check failed" at INFO level is not a fatal check
    assert line(engine, REPLICA, glog("I", "Check failed: nothing")) == []
    [f] = line(engine, REPLICA, glog("F", "Check failed: c->in_use()"))
    assert f.predicts is Predicts.CRASH


def test_a_single_match_resolves_after_five_quiet_minutes(pack_file: Path) -> None:
    engine = make(pack_file)
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    [fired] = line(engine, REPLICA, glog("F", "Check failed: x"))
    clock.advance(299)
    assert engine.tick() == []
    clock.advance(2)
    [resolved] = engine.tick()
    assert resolved.rule_id == fired.rule_id and resolved.resolved


def test_lifecycle_tag_classifies_without_a_finding(pack_file: Path) -> None:
    engine = make(pack_file)
    text = glog("I", "Successfully loaded servable version {name: m version: 2}")
    c = engine.classify(LogRecord(REPLICA, T0, text))
    assert c.rules == ("model-loaded",) and c.lifecycle == (LifecycleTag.MODEL_LOADED,) and c.predicts == ()
    assert line(engine, REPLICA, text) == []


def test_nginx_errors_are_attributed_to_the_replica_behind_the_upstream(pack_file: Path) -> None:
    engine = Engine(
        load_packs([pack_file]), ManualClock(T0), upstreams={"127.0.0.1:8501": REPLICA}, load_balancers=[NGINX]
    )
    text = (
        "2024/05/01 10:00:00 [error] 31#31: *5 upstream timed out (110: Connection timed out) while reading "
        'response header from upstream, client: 127.0.0.1, server: , request: "POST /v1/models/m:predict '
        'HTTP/1.1", upstream: "http://127.0.0.1:8501/v1/models/m:predict", host: "127.0.0.1:8080"'
    )
    [f] = engine.feed(LogRecord(NGINX, T0, text))
    assert f.target == REPLICA and f.predicts is Predicts.UPSTREAM_FAILURE


def test_lifecycle_events(pack_file: Path) -> None:
    engine = make(pack_file)
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    assert engine.feed(Lifecycle(REPLICA, T0, LifecycleKind.DIE, exit_code=0)) == []
    [f] = engine.feed(Lifecycle(REPLICA, T0, LifecycleKind.DIE, exit_code=137))
    assert f.rule_id == "oom-killed"
    findings = []
    for _ in range(3):
        clock.advance(60)
        findings += engine.feed(Lifecycle(REPLICA, clock.now(), LifecycleKind.RESTART))
    assert [f.rule_id for f in findings] == ["restart-loop"]


def test_threshold_pending_then_firing_then_held_then_resolved(pack_file: Path) -> None:
    engine = make(pack_file)
    clock = engine.clock
    assert isinstance(clock, ManualClock)

    def sample(v: float, stale: bool = False) -> list:  # type: ignore[type-arg]
        return engine.feed(Sample("memory_ratio", clock.now(), v, target=REPLICA, stale=stale))

    assert sample(0.95) == []  # pending: for 30s not yet elapsed
    clock.advance(31)
    [fired] = engine.tick()  # no new sample needed to promote pending -> firing
    assert fired.rule_id == "memory-high" and "memory_ratio = 0.95" in fired.evidence[0]
    assert sample(0.5) == []  # keep_firing_for holds it for a minute
    clock.advance(30)
    assert sample(0.95) == []  # back above while held: still firing, no new finding
    assert sample(0.5) == []
    clock.advance(61)
    [resolved] = engine.tick()
    assert resolved.resolved
    # stale data never fires a rule
    assert sample(0.99, stale=True) == []
    clock.advance(60)
    assert engine.tick() == []


def test_restart_mid_stream_keeps_windows_and_pending_timers(pack_file: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "w.db")
    clock = ManualClock(T0)
    engine = make(pack_file, store, clock)
    assert line(engine, REPLICA, OOM) == []
    assert engine.feed(Sample("memory_ratio", clock.now(), 0.95, target=REPLICA)) == []
    engine.checkpoint()
    store.close()

    store = Store(tmp_path / "w.db")
    clock.advance(31)
    restarted = make(pack_file, store, clock)
    fired = restarted.tick()
    assert [f.rule_id for f in fired] == ["memory-high"]  # the pending timer survived
    [f] = line(restarted, REPLICA, OOM)  # and so did the first of the two OOM lines
    assert f.rule_id == "oom-precursor"
    assert {r["rule_id"] for r in store.findings()} == {"memory-high", "oom-precursor"}


def test_hostile_lines_do_not_break_the_engine(pack_file: Path) -> None:
    import random

    engine = make(pack_file)
    rng = random.Random(7)
    shapes = [
        lambda: "a" * 100_000 + "!",
        lambda: bytes(rng.randrange(256) for _ in range(200)).decode("latin-1"),
        lambda: "(" * 5000 + "OOM when allocating",
        lambda: "\x00\x1b[31m" + OOM,
        lambda: '{"level": ' * 2000,
        lambda: "2024/05/01 10:00:00 [error] " + "upstream: " * 3000,
    ]
    for i in range(3000):
        engine.feed(LogRecord(Target(f"c{i % 7}"), T0, shapes[i % len(shapes)]()))
    assert engine.stats.lines == 3000


def test_batch_path_gives_the_same_findings_as_one_by_one(pack_file: Path) -> None:
    import random

    rng = random.Random(3)
    texts = [
        OOM,
        glog("F", "Check failed: x"),
        glog("I", "Successfully loaded servable version {name: m version: 2}"),
        "plain healthy line",
        '{"level": "error", "msg": "OOM when allocating"}',
        "2024/05/01 10:00:00 [error] 31#31: *5 upstream timed out (110: Connection timed out) while reading "
        'response header from upstream, client: 127.0.0.1, server: , request: "POST /x HTTP/1.1", '
        'upstream: "http://127.0.0.1:8501/x", host: "h"',
    ]
    signals = []
    ts = T0
    for _ in range(2000):
        ts += rng.choice([0.5, 3, 40])
        target = rng.choice([REPLICA, OTHER, NGINX])
        if rng.random() < 0.05:
            signals.append(Lifecycle(target, ts, LifecycleKind.DIE, exit_code=rng.choice([0, 137])))
        else:
            signals.append(LogRecord(target, ts, rng.choice(texts)))

    def run(batch: bool) -> list[tuple[str, str, float, bool]]:
        clock = ManualClock(T0)
        engine = Engine(load_packs([pack_file]), clock, upstreams={"127.0.0.1:8501": REPLICA}, load_balancers=[NGINX])
        found = []
        for i in range(0, len(signals), 50):
            chunk = signals[i : i + 50]
            clock.set(chunk[-1].ts)
            found += engine.feed_batch(chunk) if batch else engine.feed_all(chunk)
            found += engine.tick()
        return [(f.rule_id, f.target.key, f.ts, f.resolved) for f in found]

    one_by_one = run(batch=False)
    assert len(one_by_one) > 20
    assert run(batch=True) == one_by_one


def test_batch_path_gives_the_same_findings_as_one_by_one_with_the_shipped_packs(tmp_path: Path) -> None:
    """The benchmark's mixed file (healthy chatter, ~1 % real failure lines from issue threads)
    with what a batch must not get wrong: lines in wrappers (Compose, kubectl timestamp, Docker's
    JSON record), a message holding its own newline, a line past the 16 KiB cap with a failure
    after the cap, and a load balancer's lines about a replica. Batches of 512, as the live driver
    sends them; the findings, their order and the counted lines are those of feeding one by one."""
    import random

    from benchmarks.log_throughput import generate
    from watcher.model import MAX_LINE_BYTES
    from watcher.rules import SHIPPED_RULES

    rng = random.Random(7)
    path = tmp_path / "mixed.log"
    generate(path, 6000, seed=11)
    texts = path.read_text().splitlines()
    oom = OOM
    extra = [
        "tfs-1    | " + oom,
        "2024-05-01T10:00:00.123456789Z " + oom,
        json.dumps({"log": oom + "\n", "stream": "stderr", "time": "2024-05-01T10:00:00Z"}),
        "first half of a line\n" + oom,
        "x" * (MAX_LINE_BYTES - 5) + oom,
        "2024/05/01 10:00:00 [error] 31#31: *5 upstream timed out (110: Connection timed out) while reading "
        'response header from upstream, client: 127.0.0.1, server: , request: "POST /x HTTP/1.1", '
        'upstream: "http://127.0.0.1:8501/x", host: "h"',
    ]
    for _ in range(300):
        texts.insert(rng.randrange(len(texts)), rng.choice(extra))
    targets = [REPLICA, OTHER, Target("tfs-3", service="m"), NGINX]

    def run(batch: bool) -> tuple[list[tuple[str, str, float, bool]], int, list[str]]:
        clock = ManualClock(T0)
        engine = Engine(
            load_packs([SHIPPED_RULES]), clock, upstreams={"127.0.0.1:8501": REPLICA}, load_balancers=[NGINX]
        )
        found = []
        for i in range(0, len(texts), 512):
            records = [LogRecord(targets[(i + j) % 4], clock.now(), t) for j, t in enumerate(texts[i : i + 512])]
            found += engine.feed_batch(records) if batch else engine.feed_all(records)
            clock.advance(0.5)
            found += engine.tick()
        return [(f.rule_id, f.target.key, f.ts, f.resolved) for f in found], engine.stats.lines, sorted(engine.targets)

    one_by_one = run(batch=False)
    assert len(one_by_one[0]) > 20
    assert run(batch=True) == one_by_one
