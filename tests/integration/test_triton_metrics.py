"""Triton's request counters give the foresight pack's error ratio, through a real Prometheus.

Triton cannot be installed by CI here (nvidia-pytriton is a 370 MB venv that also needs the system
libpython), so the exposition is the one Triton 2.51.0 printed on this machine through nvidia-pytriton
0.7.0 (2026-12-02), served from loopback with counters that move as a model failing a third of its
requests would move them. A client's cancellations are not the replica's failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from testbed.ports import LOOPBACK, free_port
from testbed.services import Prometheus, ScrapeTarget
from tests.integration.running import foresight_series

pytestmark = pytest.mark.integration

EXPOSITION = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="affine",version="1"}} {ok}
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{{model="affine",reason="OTHER",version="1"}} 0
nv_inference_request_failure{{model="affine",reason="BACKEND",version="1"}} {backend}
nv_inference_request_failure{{model="affine",reason="CANCELED",version="1"}} {canceled}
nv_inference_request_failure{{model="affine",reason="REJECTED",version="1"}} 0
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{{model="affine",version="1"}} 0
"""


class _Triton:
    """Counters of a model that succeeds 20, fails 10 (its backend raised) and sees 30 cancelled per second."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def text(self) -> str:
        s = time.monotonic() - self.t0
        return EXPOSITION.format(ok=int(20 * s), backend=int(10 * s), canceled=int(30 * s))


@pytest.fixture
def triton() -> Iterator[str]:
    model = _Triton()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = model.text().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_tritons_failed_requests_give_the_error_ratio_and_cancellations_do_not(triton: str, tmp_path: Path) -> None:
    prom = Prometheus(
        tmp_path / "prom",
        free_port(),
        [ScrapeTarget("triton", triton, labels={"replica": "tr-0"})],
        scrape_interval_s=1.0,
    )
    got: dict[str, float] = {}
    with prom:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and "error_ratio" not in got:
            time.sleep(1.0)
            got = foresight_series(prom.url, "tr-0")
    assert set(got) == {"error_ratio"}, got  # cumulative duration counters give no p99
    assert 0.28 <= got["error_ratio"] <= 0.39, got  # 10 of 30 the server answered; the 30 cancelled are not counted
