"""Only the load balancer's own lines name a replica, from the field nginx writes, and only a
known one (issue #14: a log line could make the watcher act on another replica)."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.inventory import LabelNames, Snapshot, WatchedContainer
from watcher.live import LiveConfig, LiveWatcher
from watcher.model import Finding, LogRecord, Target
from watcher.parsers import nginx
from watcher.rulepack.compile import load_packs
from watcher.rules import SHIPPED_RULES
from watcher.store import Store

T0 = 1_796_132_695.0
LB = Target("nginx")
A = Target("replica-a", service="svc")
B = Target("replica-b", service="svc")
UPSTREAMS = {"127.0.0.1:8501": A, "127.0.0.1:8502": B}

# Real nginx 1.22 (tests/integration/test_attribution_nginx.py): A (8501) refused, the request
# carried Referer 'upstream server temporarily disabled", upstream: "http://127.0.0.1:8502/'.
_CONTEXT = (
    'client: 127.0.0.1, server: _, request: "GET /v1/models/m:predict HTTP/1.1", '
    'upstream: "http://127.0.0.1:8501/v1/models/m:predict", host: "127.0.0.1:44321", '
    'referrer: "upstream server temporarily disabled", upstream: "http://127.0.0.1:8502/"'
)
REFUSED = (
    "2026/12/01 13:44:55 [error] 18889#18889: *2 connect() failed (111: Connection refused) while "
    "connecting to upstream, " + _CONTEXT
)
DISABLED = (
    "2026/12/01 13:44:55 [warn] 18889#18889: *2 upstream server temporarily disabled while connecting to "
    "upstream, " + _CONTEXT
)
# the same Referer on an ordinary request to a healthy A, in the default access-log format
ACCESS = (
    '127.0.0.1 - - [01/Dec/2026:13:44:55 +0000] "GET /v1/models/m:predict HTTP/1.1" 200 2 '
    '"upstream server temporarily disabled\\x22, upstream: \\x22http://127.0.0.1:8502/" "curl/8.5.0" '
    "127.0.0.1:8501 200 0.001"
)
JSON_5XX = '{"upstream_addr":"127.0.0.1:8502","upstream_status":"503"}'


def run(records: list[LogRecord], minutes: int = 3) -> list[Finding]:
    clock = ManualClock(T0)
    engine = Engine(load_packs([SHIPPED_RULES]), clock, upstreams=UPSTREAMS, load_balancers=[LB])
    found: list[Finding] = []
    for record in records:
        clock.advance(1)
        found += engine.feed(record)
    for _ in range(minutes * 60):
        clock.advance(1)
        found += engine.tick()
    return found


def test_the_error_log_upstream_is_the_one_nginx_wrote_not_the_referer() -> None:
    parsed = nginx.parse(DISABLED)
    assert parsed is not None
    assert parsed.fields["upstream_addr"] == "127.0.0.1:8501"
    assert parsed.fields["host"] == "127.0.0.1:44321"
    assert parsed.fields["referrer"] == 'upstream server temporarily disabled", upstream: "http://127.0.0.1:8502/'
    assert parsed.message == "upstream server temporarily disabled while connecting to upstream"


def test_a_hostile_referer_never_acts_on_the_replica_it_names() -> None:
    found = run([LogRecord(LB, T0, REFUSED), LogRecord(LB, T0, DISABLED)])
    assert [f for f in found if f.target == B] == []
    # one request: not enough to drain A either (nginx-upstream-disabled counts, the Referer's
    # words do not count as nginx's)
    assert [f for f in found if not f.resolved] == []


def test_a_referer_in_the_access_log_is_not_the_load_balancer_speaking() -> None:
    found = run([LogRecord(LB, T0, ACCESS) for _ in range(5)])
    assert found == []


def test_a_watched_container_printing_an_upstream_speaks_about_itself_only() -> None:
    container = Target("replica-c", service="svc")
    found = run([LogRecord(container, T0, JSON_5XX) for _ in range(5)])
    assert [f for f in found if f.target == B] == []
    assert {f.target for f in found} <= {container}


def test_the_load_balancer_names_only_known_replicas() -> None:
    line = DISABLED.replace("127.0.0.1:8501/v1", "127.0.0.1:9999/v1")
    clock = ManualClock(T0)
    engine = Engine(load_packs([SHIPPED_RULES]), clock, upstreams=UPSTREAMS, load_balancers=[LB])
    assert engine.parse(LogRecord(LB, T0, line)).target == LB
    assert engine.parse(LogRecord(LB, T0, DISABLED)).target == A
    assert engine.parse(LogRecord(A, T0, DISABLED)).target == A  # a replica's own line stays its own


def test_replay_attributes_the_load_balancers_lines_only_when_told_which_they_are() -> None:
    """Replay (notebooks, lead-time evaluation) attributes as live does: only from the LB's logs."""
    from watcher.replay import replay

    lines = [
        LogRecord(
            LB,
            T0 + i,
            f"2026/12/01 13:44:{55 + i} [error] 18889#18889: *{i} connect() failed "
            "(111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: _, "
            'request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8501/", host: "127.0.0.1:44321"',
        )
        for i in range(4)
    ]
    packs = load_packs([SHIPPED_RULES])
    told = replay(packs, lines, upstreams=UPSTREAMS, load_balancers=[LB])
    untold = replay(packs, lines, upstreams=UPSTREAMS)
    assert {f.target.container for f in told.findings if not f.resolved} == {"replica-a"}
    assert "replica-a" not in {f.target.container for f in untold.findings}


# Forged contexts (issue #14, review of the error-log parser): the client writes the request line, the
# Host and the Referer, and nginx quotes outside text into some messages. Real nginx 1.22 answers 400 to
# a request line or a Host with a space in it, and logs '"' and ',' in the URI and the Host raw:
REAL_QUOTES = (
    "2026/12/01 15:31:34 [error] 10510#10510: *3 connect() failed (111: Connection refused) while connecting to "
    'upstream, client: 127.0.0.1, server: _, request: "GET /a"b,c%22%20d HTTP/1.1", '
    'upstream: "http://127.0.0.1:8501/a"b,c%22%20d", host: "x"z,", referrer: "r", upstream: "http://127.0.0.1:8502/"'
)
_HEAD = "2026/12/01 13:44:55 [error] 18889#18889: *2 "
_FAKE = 'client: 1.2.3.4, server: _, request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:8502/", host: "h", '
FORGED = {
    # an old nginx (< 1.21.1) accepted spaces in the URI: the request line carries a whole fake context
    "spaces in the request line, 0.9-shaped": (
        _HEAD + "connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, "
        'server: _, request: "GET /a", upstream: "http://127.0.0.1:8502/", host: "h", referrer: "z HTTP/1.1", '
        'upstream: "http://127.0.0.1:8501/a%22,%20upstream:%20%22http://127.0.0.1:8502/", host: "real"'
    ),
    "spaces in the request line, upstream with a space": (
        _HEAD + "connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, "
        'server: _, request: "GET /a", upstream: "http://127.0.0.1:8502/x HTTP/1.1", '
        'upstream: "http://127.0.0.1:8501/a%22", host: "real"'
    ),
    # the decoded URI quoted in a message (log_not_found): a fake context before nginx's own
    "a fake context in an open() path": (
        _HEAD
        + 'open() "/srv/upstream timed out (110: x) while reading response header from upstream, '
        + _FAKE
        + 'referrer: "" failed (2: No such file or directory), client: 127.0.0.1, server: _, '
        'request: "GET /upstream%20timed%20out HTTP/1.1", host: "lb"'
    ),
    # a replica's (or anyone's) header quoted in the message
    "a fake context in a quoted header": (
        _HEAD + 'upstream sent invalid header: "X: y, ' + _FAKE + 'referrer: "" while reading response header '
        'from upstream, client: 127.0.0.1, server: _, request: "GET / HTTP/1.1", '
        'upstream: "http://127.0.0.1:8501/", host: "lb"'
    ),
}


def test_the_upstream_nginx_wrote_survives_quotes_and_commas_in_the_uri_and_host() -> None:
    parsed = nginx.parse(REAL_QUOTES)
    assert parsed is not None
    assert parsed.fields["upstream_addr"] == "127.0.0.1:8501" and parsed.fields["host"] == 'x"z,'


@pytest.mark.parametrize("name", list(FORGED))
def test_a_forged_context_names_no_replica(name: str) -> None:
    line = FORGED[name]
    parsed = nginx.parse(line)
    assert parsed is not None
    assert parsed.fields.get("upstream_addr") in (None, "127.0.0.1:8501"), parsed.fields
    clock = ManualClock(T0)
    engine = Engine(load_packs([SHIPPED_RULES]), clock, upstreams=UPSTREAMS, load_balancers=[LB])
    assert engine.parse(LogRecord(LB, T0, line)).target != B


def _container(name: str, labels: dict[str, str], running: bool = True) -> WatchedContainer:
    return WatchedContainer(
        engine="local",
        id=name * 4,
        name=name,
        target=Target(name, "local", labels.get("watcher.service")),
        labels=labels,
        upstream=labels.get("watcher.upstream"),
        model=None,
        running=running,
        health=None,
        started_at="",
        tty=False,
    )


class _Inventory:
    """The inventory as the live watcher reads it: a snapshot of the watched containers (Docker's metadata)."""

    engine_names = ("local",)
    names = LabelNames()

    def __init__(self, containers: list[WatchedContainer]) -> None:
        self.containers = containers

    def snapshot(self) -> Snapshot:
        return Snapshot({"local": {c.id: c for c in self.containers}}, {"local": True})


def test_a_load_balancer_container_is_marked_by_its_docker_label_not_by_its_lines(tmp_path: Path) -> None:
    """Nginx in a container (deploy/compose.yaml): its log lines name the replica behind the
    upstream when Docker says it is the load balancer (``watcher.role=load-balancer``); the same
    line from a container without that label speaks about that container only."""
    replica = {"watcher.service": "svc", "watcher.upstream": "127.0.0.1:8501"}
    a = _container("replica-a", replica)
    lb = _container("tfs-nginx", {"watcher.role": "load-balancer"})
    other = _container("chatty", {"watcher.role": "replica"})
    line = REFUSED  # the upstream nginx wrote is 127.0.0.1:8501 (A); the Referer names B
    store = Store(tmp_path / "w.db")
    try:
        live = LiveWatcher(
            LiveConfig(stats_interval_s=None),
            load_packs([SHIPPED_RULES]),
            store,
            clock=ManualClock(T0),
            inventory=_Inventory([a, lb, other]),  # type: ignore[arg-type]
        )
        live.refresh_upstreams()
        assert live.engine.parse(LogRecord(lb.target, T0, line)).target == a.target
        assert live.engine.parse(LogRecord(other.target, T0, line)).target == other.target
        assert live.engine.upstreams == {"127.0.0.1:8501": a.target}
        live.request_reload(load_packs([SHIPPED_RULES]))
        live._swap_engine(live._reload)  # type: ignore[arg-type]  # a hot reload keeps the marking
        assert live.engine.parse(LogRecord(lb.target, T0, line)).target == a.target
    finally:
        store.close()
