"""Unit tests for the open-loop load generator against a tiny loopback HTTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testbed.loadgen import LoadGenerator, LoadResult, RequestRecord, outputs_match, percentile


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # open loop opens many connections at once


class _Handler(BaseHTTPRequestHandler):
    """Behaviour chosen by model name in ``/v1/models/<model>:predict``."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, payload: object, upstream: str = "127.0.0.1:9001") -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", upstream)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length))
        assert "instances" in request
        model = self.path.split("/v1/models/", 1)[1].split(":", 1)[0].split("/", 1)[0]
        if model == "fast":
            self._send(200, {"predictions": [[1.0]]})
        elif model == "slow":
            time.sleep(0.5)
            self._send(200, {"predictions": [[1.0]]})
        elif model == "hang":
            time.sleep(2.0)
            self._send(200, {"predictions": [[1.0]]})
        elif model == "error":
            self._send(500, {"error": "boom"})
        elif model == "wrong":
            self._send(200, {"predictions": [[2.0]]})
        elif model == "retried":
            self._send(200, {"predictions": [[1.0]]}, upstream="127.0.0.1:9001, 127.0.0.1:9002")
        elif model == "garbage":
            body = b"not json"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._send(404, {"error": "no such model"})


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


EXPECTED = {"1": [[1.0]]}


def _gen(base_url: str, model: str, **kw: object) -> LoadGenerator:
    args: dict[str, object] = {
        "rate_per_s": 20.0,
        "duration_s": 0.5,
        "timeout_s": 1.0,
        "instances": [[0.5]],
        "expected": EXPECTED,
    }
    args.update(kw)
    return LoadGenerator(base_url, model, **args)  # type: ignore[arg-type]


def test_fast_requests_all_ok(base_url: str) -> None:
    res = _gen(base_url, "fast").run()
    assert res.requests == 10
    assert res.failed == 0 and res.failed_ratio == 0.0
    assert res.status_counts == {"200": 10}
    assert res.upstream_counts == {"127.0.0.1:9001": 10}
    assert res.version_counts == {"1": 10}
    assert all(r.ok and r.matched for r in res.records)
    assert res.p50_ms < 200


def test_open_loop_rate_is_honoured_when_server_is_slow(base_url: str) -> None:
    # 40 req/s for 1 s against a 0.5 s server: a closed-loop client would need 20 s.
    t0 = time.monotonic()
    res = _gen(base_url, "slow", rate_per_s=40.0, duration_s=1.0, timeout_s=2.0).run()
    wall = time.monotonic() - t0
    assert res.requests == 40
    assert res.failed == 0
    assert wall < 2.5, wall
    for r in res.records:
        assert r.scheduled_s == pytest.approx(r.index / 40.0)
        assert r.started_s - r.scheduled_s < 0.1, r
    assert res.max_start_lag_ms < 100
    assert res.achieved_rate_per_s == pytest.approx(40.0, rel=0.15)
    assert 450 < res.p50_ms < 1000


def test_timeouts_are_recorded_as_failed(base_url: str) -> None:
    t0 = time.monotonic()
    res = _gen(base_url, "hang", rate_per_s=10.0, duration_s=0.5, timeout_s=0.3).run()
    assert time.monotonic() - t0 < 1.5
    assert res.requests == 5
    assert res.failed == 5 and res.failed_ratio == 1.0
    assert res.status_counts == {"timeout": 5}
    for r in res.records:
        assert r.http_status is None
        assert 280 <= r.latency_ms < 700


def test_wrong_prediction_is_failed_even_with_200(base_url: str) -> None:
    res = _gen(base_url, "wrong").run()
    assert res.status_counts == {"200": 10}
    assert res.failed == 10
    assert all(r.matched is False and not r.ok for r in res.records)
    # ...but with both versions acceptable it is OK and the version is attributed.
    res2 = _gen(base_url, "wrong", expected={"1": [[1.0]], "2": [[2.0]]}).run()
    assert res2.failed == 0
    assert res2.version_counts == {"2": 10}


def test_predicate_and_none_expected(base_url: str) -> None:
    res = _gen(base_url, "wrong", expected=lambda preds: preds[0][0] > 1.5).run()
    assert res.failed == 0
    res = _gen(base_url, "fast", expected=lambda preds: preds[0][0] > 1.5).run()
    assert res.failed == 10
    res = _gen(base_url, "wrong", expected=None).run()
    assert res.failed == 0


def test_http_errors_and_garbage_are_failed(base_url: str) -> None:
    res = _gen(base_url, "error").run()
    assert res.status_counts == {"500": 10} and res.failed == 10
    assert all(r.http_status == 500 for r in res.records)
    res = _gen(base_url, "garbage").run()
    assert res.failed == 10
    assert all(r.error == "response is not JSON" for r in res.records)


def test_connection_error_is_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    res = LoadGenerator(f"http://127.0.0.1:{port}", "m", 20.0, 0.25, 1.0, [[1.0]], EXPECTED).run()
    assert res.requests == 5
    assert res.status_counts == {"connection_error": 5}
    assert res.failed_ratio == 1.0


def test_retried_upstream_counts_final_server(base_url: str) -> None:
    res = _gen(base_url, "retried").run()
    assert res.upstream_counts == {"127.0.0.1:9002": 10}
    assert res.records[0].upstream == "127.0.0.1:9001, 127.0.0.1:9002"


def test_stop_early_from_background(base_url: str) -> None:
    gen = _gen(base_url, "fast", rate_per_s=20.0, duration_s=30.0).start()
    time.sleep(0.5)
    t0 = time.monotonic()
    gen.stop()
    res = gen.result(timeout_s=5.0)
    assert time.monotonic() - t0 < 2.0
    assert res.stopped_early
    assert 3 <= res.requests < 30
    assert res.failed == 0


def test_request_path_with_version(base_url: str) -> None:
    gen = _gen(base_url, "fast", version=3)
    assert gen.path == "/v1/models/fast/versions/3:predict"
    assert gen.run().failed == 0


def test_to_dict_is_json_serialisable(base_url: str) -> None:
    res = _gen(base_url, "fast", rate_per_s=10.0, duration_s=0.3).run()
    d = json.loads(json.dumps(res.to_dict()))
    assert d["requests"] == 3 == len(d["records"])
    assert d["failed"] == 0
    assert set(d["records"][0]) >= {"scheduled_s", "started_s", "latency_ms", "status", "upstream", "matched"}
    assert "records" not in res.to_dict(include_records=False)


def test_percentile_linear_interpolation() -> None:
    xs = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 99) == pytest.approx(99.01)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([], 50) != percentile([], 50)  # NaN
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_result_percentiles_from_records() -> None:
    records = [
        RequestRecord(index=i, scheduled_s=i / 10, started_s=i / 10, latency_ms=float(i + 1), status="200", ok=True)
        for i in range(100)
    ]
    res = LoadResult("u", 10.0, 10.0, 1.0, 0.0, 10.0, False, records)
    assert res.p50_ms == pytest.approx(50.5)
    assert res.p99_ms == pytest.approx(99.01)
    assert res.failed == 0
    assert res.max_start_lag_ms == 0.0


def test_outputs_match_tolerance() -> None:
    assert outputs_match([[1.0, 2.0]], [[1.0 + 1e-9, 2.0]])
    assert not outputs_match([[1.0, 2.0]], [[1.0, 2.1]])
    assert not outputs_match([[1.0]], [[1.0, 2.0]])
    assert outputs_match({"a": [1]}, {"a": [1.0]})
    assert not outputs_match([True], [1])


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        LoadGenerator("http://127.0.0.1:1", "m", 0.0, 1.0, 1.0, [])
    with pytest.raises(ValueError):
        LoadGenerator("https://127.0.0.1:1", "m", 1.0, 1.0, 1.0, [])
