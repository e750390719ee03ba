"""PrometheusSource against a tiny loopback server speaking /api/v1/query JSON."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from watcher.model import Target
from watcher.sources.base import SignalQueue
from watcher.sources.prometheus import PrometheusSource, PromQuery


class FakeProm:
    """mode: "ok" serves ``self.results[query]``; "503" fails; "slow" sleeps past the timeout."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query).get("query", [""])[0]
                fake.requests.append(query)
                if fake.mode == "503":
                    self.send_response(503)
                    self.end_headers()
                    self.wfile.write(b"Service Unavailable")
                    return
                if fake.mode == "slow":
                    time.sleep(1.5)
                body = json.dumps(
                    {"status": "success", "data": {"resultType": "vector", "result": fake.results.get(query, [])}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prom() -> Iterator[FakeProm]:
    p = FakeProm()
    yield p
    p.close()


def vec(replica: str, value: str, ts: float = 1000.0, **extra: str) -> dict[str, Any]:
    return {"metric": {"replica": replica, "model": "m", **extra}, "value": [ts, value]}


Q = PromQuery("err_ratio", "err_ratio_expr", target_label="replica", service_label="model")


def source(prom: FakeProm, **kw: Any) -> tuple[PrometheusSource, SignalQueue]:
    q = SignalQueue(1000, 1000)
    kw.setdefault("interval_s", 1.0)
    kw.setdefault("timeout_s", 0.5)
    return PrometheusSource(q, prom.url, [Q], **kw), q


def test_vector_maps_to_samples_with_targets(prom: FakeProm) -> None:
    prom.results["err_ratio_expr"] = [vec("r0", "0.25"), vec("r1", "0"), {"metric": {}, "value": [1000, "3"]}]
    src, q = source(prom, engine="e1")
    samples = src.poll_once(now=2000.0)
    assert samples is not None and src.connected and src.last_error is None
    by = {s.labels.get("replica"): s for s in samples}
    assert by["r0"].value == 0.25 and by["r0"].ts == 1000.0 and by["r0"].series == "err_ratio"
    assert by["r0"].target == Target("r0", engine="e1", service="m")
    assert by[None].target is None  # no replica label: a fleet-wide value
    assert not any(s.stale for s in samples)
    assert [e.source for e in q.get_batch(10, 0)] == ["prometheus:err_ratio"] * 3


def test_series_absent_from_a_successful_result_is_stale_once(prom: FakeProm) -> None:
    prom.results["err_ratio_expr"] = [vec("r0", "0.1"), vec("r1", "0.2")]
    src, _ = source(prom)
    src.poll_once(now=10.0)
    prom.results["err_ratio_expr"] = [vec("r0", "0.3")]
    samples = src.poll_once(now=11.0)
    assert samples is not None
    stale = [s for s in samples if s.stale]
    assert [(s.labels["replica"], s.value, s.ts) for s in stale] == [("r1", 0.2, 11.0)]
    again = src.poll_once(now=12.0)
    assert again is not None and not any(s.stale for s in again)  # once, not forever


def test_nan_is_not_emitted(prom: FakeProm) -> None:
    prom.results["err_ratio_expr"] = [vec("r0", "NaN")]
    src, _ = source(prom)
    assert src.poll_once(now=1.0) == []


def test_503_is_reported_not_raised_and_emits_nothing_then_stale_after_n_intervals(prom: FakeProm) -> None:
    prom.results["err_ratio_expr"] = [vec("r0", "0.1")]
    src, q = source(prom, stale_after_intervals=3)
    src.poll_once(now=100.0)
    q.get_batch(100, 0)
    prom.mode = "503"
    assert src.poll_once(now=101.0) is None
    assert not src.connected and "503" in (src.last_error or "")
    assert q.depth == 0  # a failed query is no data, not a zero
    assert src.poll_once(now=103.0) is None and q.depth == 0
    src.poll_once(now=104.0)  # > 3 intervals since the last refresh: stale, once
    got = q.get_batch(100, 0)
    assert [(s.signal.stale, s.signal.value) for s in got] == [(True, 0.1)]  # type: ignore[union-attr]
    src.poll_once(now=110.0)
    assert q.depth == 0
    prom.mode = "ok"
    assert src.poll_once(now=111.0) is not None and src.connected and src.last_error is None


def test_slow_prometheus_times_out_and_is_reported(prom: FakeProm) -> None:
    prom.results["err_ratio_expr"] = [vec("r0", "0.1")]
    prom.mode = "slow"
    src, q = source(prom, timeout_s=0.3)
    t = time.monotonic()
    assert src.poll_once(now=1.0) is None
    assert time.monotonic() - t < 1.2
    assert not src.connected and "timeout" in (src.last_error or "") and q.depth == 0


def test_closed_port_and_backoff_in_the_running_loop(prom: FakeProm) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    q = SignalQueue(10, 10)
    src = PrometheusSource(q, f"http://127.0.0.1:{port}", [Q], interval_s=0.05, timeout_s=0.2, backoff_cap_s=0.4)
    src.start()
    time.sleep(1.0)
    src.stop()
    assert not src.connected and "connection" in (src.last_error or "")
    # With backoff 0.05, 0.1, 0.2, 0.4, 0.4 ... about 5 attempts in a second instead of 20.
    assert 3 <= src.failures <= 8 and q.depth == 0


def test_duplicate_query_ids_are_refused(prom: FakeProm) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        PrometheusSource(SignalQueue(1, 1), prom.url, [Q, Q])
