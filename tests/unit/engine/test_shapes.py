"""A failure message is recognised in whatever wrapper it arrives, and its rule's ``source`` asks what the
line is, not what the container's format guess says (issue #13); a load balancer's lines still count
only as nginx wrote them (issue #14)."""

from __future__ import annotations

import json

import pytest

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.model import LogRecord, Target
from watcher.rulepack.loader import parse_text
from watcher.rulepack.schema import RulePack

T0 = 1_714_557_600.0
REPLICA = Target("tfs-1", service="m")
PACK = """
pack: shapes
rules:
  - id: tfs-check-failed
    match: {log: 'Check failed', source: tfserving, level: [fatal]}
    predicts: crash
  - id: tfs-fatal-line
    match: {log: '^F[0-9]{4} ', regex: true, source: tfserving}
    predicts: crash
  - id: nginx-timeout
    match: {log: 'upstream timed out', source: nginx}
    predicts: upstream_failure
"""
CHECK = "2024-05-01 10:00:00.000000: F tensorflow_serving/model_servers/server.cc:1] Check failed: ok"
GLOG = "F0501 10:00:00.123456    12 tensorflow_serving/core/loader_harness.cc:1] Check failed: ok"
NGINX = "2021/12/31 13:40:37 [error] 13#13: *1 upstream timed out (110: Connection timed out) while reading"
WRAPS = {
    "compose": lambda line: "tfs-1    | " + line,
    "compose v1": lambda line: "serving_tfs_1  | " + line,
    "kubectl --timestamps": lambda line: "2023-10-01T12:00:00.123456789Z " + line,
    "journald": lambda line: "Oct 01 12:00:00 host dockerd[123]: " + line,
    "docker json-file": lambda line: json.dumps(
        {"log": line + "\n", "stream": "stderr", "time": "2023-10-01T12:00:00Z"}
    ),
    "json message": lambda line: json.dumps({"message": line}),
    "json msg": lambda line: json.dumps({"msg": line}),
    "cloud logging": lambda line: json.dumps({"textPayload": line}),
    "compose + docker -t": lambda line: "tfs-1  | 2023-10-01T12:00:00.123456789Z " + line,
}


def packs() -> list[RulePack]:
    loaded, errors = parse_text(PACK, "shapes.yaml")
    assert not errors
    return loaded


def engine() -> Engine:
    return Engine(packs(), ManualClock(T0))


@pytest.mark.parametrize("shape", WRAPS)
def test_a_wrapped_failure_matches_its_sourced_rule_one_by_one_and_in_a_block(shape: str) -> None:
    wrap = WRAPS[shape]
    expected = {CHECK: ("tfs-check-failed",), GLOG: ("tfs-check-failed", "tfs-fatal-line"), NGINX: ("nginx-timeout",)}
    for line, rules in expected.items():
        assert engine().classify(LogRecord(REPLICA, T0, wrap(line))).rules == rules, line
    e = engine()
    records = [LogRecord(REPLICA, T0, "healthy chatter")] * 3 + [LogRecord(REPLICA, T0, wrap(CHECK))]
    assert [(f.rule_id, f.target) for f in e.feed_batch(records)] == [("tfs-check-failed", REPLICA)]


def test_a_format_guess_does_not_blind_a_container_to_another_format() -> None:
    """Eight gRPC client lines make the container's guess 'grpc' (its parser takes any line naming a
    StatusCode); a TF Serving line that names one is still a TF Serving line for a tfserving rule."""
    e = engine()
    for _ in range(8):
        e.parse(LogRecord(REPLICA, T0, "status = StatusCode.UNAVAILABLE"))
    line = "2024-05-01 10:00:00.000000: F tensorflow_serving/x.cc:1] Check failed: StatusCode.UNAVAILABLE"
    assert e.parse(LogRecord(REPLICA, T0, line)).source == "grpc"  # the guess, as before
    assert e.classify(LogRecord(REPLICA, T0, line)).rules == ("tfs-check-failed",)


def test_a_wrapper_never_lends_a_rule_its_source_or_level() -> None:
    """The wrapper's words are not the server's: a plain message in a JSON record stays a plain line."""
    assert engine().classify(LogRecord(REPLICA, T0, json.dumps({"level": "fatal", "msg": "Check failed"}))).rules == ()
    assert engine().classify(LogRecord(REPLICA, T0, "tfs-1  | Check failed")).rules == ()


def test_a_json_record_keeps_its_level_and_members() -> None:
    parsed = engine().parse(LogRecord(REPLICA, T0, json.dumps({"level": "error", "msg": "boom", "model": "m"})))
    assert (parsed.source, parsed.message, parsed.level, parsed.fields.get("model")) == ("json", "boom", "error", "m")
    parsed = engine().parse(LogRecord(REPLICA, T0, "tfs-1    | " + CHECK))
    assert (parsed.source, parsed.level, parsed.fields.get("file")) == (
        "tfserving",
        "fatal",
        "tensorflow_serving/model_servers/server.cc",
    )


def test_a_load_balancers_line_is_not_unwrapped_so_a_client_cannot_write_its_upstream() -> None:
    """A JSON member could hold a client's text (a request, a header): unwrapped, a crafted nginx line in
    it would name the replica to blame. The load balancer's lines are read as its parser reads them."""
    lb, a, b = Target("nginx"), Target("replica-a"), Target("replica-b")
    crafted = (
        "2026/12/01 13:44:55 [error] 1#1: *2 upstream timed out (110: Connection timed out) while connecting "
        'to upstream, client: 127.0.0.1, server: _, request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8502/"'
    )
    e = Engine(
        packs(),
        ManualClock(T0),
        upstreams={"127.0.0.1:8501": a, "127.0.0.1:8502": b},
        load_balancers=[lb],
    )
    assert e.parse(LogRecord(lb, T0, crafted)).target == b  # nginx's own line names the replica, as before
    for wrapped in (json.dumps({"msg": crafted}), "nginx-1  | " + crafted):
        assert e.parse(LogRecord(lb, T0, wrapped)).target == lb
        assert e.classify(LogRecord(lb, T0, wrapped)).rules == ()
