"""A client cannot make the watcher act on a replica of its choice through real Nginx's logs.

Nginx writes the Referer into its error log unescaped, *after* the upstream it really used. A
request whose Referer reads ``upstream server temporarily disabled", upstream: "http://<B>/``
used to be attributed to B and planned drain/restart/verify on B. Here real nginx (loopback, no
Docker) proxies one such request to a dead replica A and on to a live replica B; its own logs go
through the engine with the shipped packs: nothing is found about B.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from testbed.ports import free_port
from testbed.services import Nginx, Upstream
from watcher.clock import ManualClock
from watcher.engine import Engine
from watcher.model import LogRecord, Target
from watcher.rulepack.compile import load_packs
from watcher.rules import SHIPPED_RULES

pytestmark = pytest.mark.integration

LB = Target("nginx")
A = Target("replica-a", service="svc")
B = Target("replica-b", service="svc")


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def live_backend() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if line]


def test_a_hostile_referer_through_real_nginx_does_not_name_another_replica(tmp_path: Path, live_backend: str) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: nginx logs connect() failed + temporarily disabled
    upstreams = [Upstream("a", dead, 1), Upstream("b", live_backend, 1)]
    hostile = f'upstream server temporarily disabled", upstream: "http://{live_backend}/'
    with Nginx(tmp_path / "nginx", free_port(), upstreams) as nginx:
        session = requests.Session()
        session.trust_env = False  # loopback only
        response = session.get(f"{nginx.url}/v1/models/m", headers={"Referer": hostile}, timeout=10)
        assert response.status_code == 200  # A refused, B answered
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(hostile in line for line in _lines(nginx.error_log_path)):
            time.sleep(0.05)
        error_lines = [line for line in _lines(nginx.error_log_path) if "upstream" in line]
        access_lines = _lines(nginx.access_log_path)

    # nginx really wrote the Referer after the real upstream, unescaped
    [disabled] = [line for line in error_lines if "temporarily disabled while" in line]
    assert f'upstream: "http://{dead}/v1/models/m", host: ' in disabled
    assert disabled.endswith(f'referrer: "{hostile}"')

    engine = Engine(
        load_packs([SHIPPED_RULES]),
        ManualClock(time.time()),
        upstreams={dead: A, live_backend: B},
        load_balancers=[LB],
    )
    records = [LogRecord(LB, time.time(), line) for line in error_lines + access_lines]
    assert engine.parse(records[error_lines.index(disabled)]).target == A  # the upstream nginx used
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    findings = engine.feed_all(records)
    for _ in range(120):  # two minutes: any pending rule would have fired
        clock.advance(1)
        findings += engine.tick()
    assert [f for f in findings if f.target == B] == []
    assert all(f.target in (A, LB) for f in findings), findings
