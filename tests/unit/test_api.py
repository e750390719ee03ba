"""The API against hostile clients: a real ``Api`` on a loopback port, malformed requests sent raw."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from watcher.api import Api, ApiLimits, positive_seconds

TOKEN = "t0ken-for-tests"


class Recorder:
    def __init__(self) -> None:
        self.silences: list[float] = []

    def silence(self, body: dict[str, Any]) -> dict[str, Any]:
        self.silences.append(positive_seconds(body, "duration_s", 3600.0, 30 * 86400.0))
        return {"silenced": body.get("matchers")}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_api(recorder: Recorder, **kwargs: Any) -> Api:
    return Api(
        ("127.0.0.1", 0),
        CollectorRegistry(),
        lambda: (True, {}),
        lambda: (True, {}),
        lambda: {"targets": {"local/tfs-1": {}}},
        {"silence": recorder.silence},
        TOKEN,
        limits=ApiLimits(idle_timeout_s=1.0, read_timeout_s=1.0, request_deadline_s=2.0, workers=4, max_pending=400),
        **kwargs,
    ).start()


@pytest.fixture
def api(recorder: Recorder) -> Iterator[Api]:
    server = make_api(recorder)
    yield server
    server.stop()


def exchange(api: Api, data: bytes, wait_s: float = 5.0) -> tuple[int, dict[str, Any]]:
    """Send ``data`` on a fresh connection, read to EOF: the status code and the JSON body."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=wait_s) as conn:
        conn.sendall(data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), f"no HTTP answer: {answer!r}"
    return int(head.split()[1]), json.loads(body)


def post(api: Api, body: bytes, *, headers: str | None = None, ctype: str = "application/json") -> tuple[int, Any]:
    if headers is None:
        headers = f"Content-Length: {len(body)}\r\n"
    head = (
        f"POST /silence HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {ctype}\r\n{headers}\r\n"
    )
    return exchange(api, head.encode() + body)


SILENCE = b'{"matchers": {"target": "local/tfs-1"}, "duration_s": 60}'


def test_a_well_formed_silence_is_applied(api: Api, recorder: Recorder) -> None:
    assert post(api, SILENCE)[0] == 200
    assert recorder.silences == [60.0]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ("Content-Length: abc\r\n", 400),
        ("Content-Length: -1\r\n", 400),
        ("Content-Length: 1e3\r\n", 400),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", 400),
        ("Content-Length: 99999999999\r\n", 413),
        ("Transfer-Encoding: chunked\r\n", 411),
    ],
)
def test_bad_framing_is_refused_with_json_and_nothing_is_applied(
    api: Api, recorder: Recorder, headers: str, code: int
) -> None:
    status, body = post(api, b"", headers=headers)
    assert (status, body["code"]) == (code, code)
    assert body["error"]
    assert recorder.silences == []


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"])
def test_mutations_take_only_json(api: Api, recorder: Recorder, ctype: str) -> None:
    assert post(api, SILENCE, ctype=ctype)[0] == 415
    assert recorder.silences == []


@pytest.mark.parametrize(
    "duration", ['"nan"', "NaN", "Infinity", "-Infinity", "1e999", '"60"', "true", "0", "-5", "1e9"]
)
def test_durations_must_be_finite_positive_and_bounded(api: Api, recorder: Recorder, duration: str) -> None:
    body = b'{"matchers": {"target": "local/tfs-1"}, "duration_s": ' + duration.encode() + b"}"
    status, answer = post(api, body)
    assert status == 400, answer
    assert recorder.silences == []


def test_garbage_gets_json_errors_not_a_dropped_connection(api: Api) -> None:
    assert exchange(api, b"GARBAGE\r\n\r\n")[0] == 400
    assert exchange(api, b"DELETE /silence HTTP/1.1\r\n\r\n")[0] == 501
    assert exchange(api, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")[0] == 414
    assert post(api, b'{"matchers": ' + b"[" * 5000)[0] == 400
    assert exchange(api, b"GET /nope HTTP/1.1\r\n\r\n") == (404, {"error": "no such endpoint: /nope", "code": 404})


def test_idle_connections_neither_exhaust_it_nor_stay_open(api: Api) -> None:
    idle = [socket.create_connection(("127.0.0.1", api.port), timeout=5) for _ in range(300)]
    try:
        started = time.monotonic()
        status, body = exchange(api, b"GET /healthz HTTP/1.1\r\n\r\n", wait_s=2.0)
        assert status == 200 and body["ok"] is True
        assert time.monotonic() - started < 1.0, "a normal request waited behind the idle connections"
        for conn in idle:  # each is closed by the server after the idle timeout (1 s here)
            conn.settimeout(5.0)
            assert conn.recv(1) == b""
        assert time.monotonic() - started < 6.0
    finally:
        for conn in idle:
            conn.close()


def test_a_client_dripping_bytes_is_cut_off_at_the_request_deadline(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as conn:
        started = time.monotonic()
        conn.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        while time.monotonic() - started < 5:
            try:
                conn.sendall(b"X-Slow: 1\r\n")
                conn.settimeout(0.5)
                if conn.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed, "a slow client held its connection past the request deadline"
        assert time.monotonic() - started < 4.0


def test_more_requests_than_workers_get_503_at_once(recorder: Recorder) -> None:
    server = make_api(recorder)
    try:
        # four workers, each held by a request whose body never comes
        held = []
        for _ in range(4):
            conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            conn.sendall(f"POST /silence HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n".encode())
            held.append(conn)
        time.sleep(0.3)
        started = time.monotonic()
        status, body = exchange(server, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert status == 503 and body["code"] == 503
        assert time.monotonic() - started < 1.0
        for conn in held:
            conn.close()
        time.sleep(0.3)
        assert exchange(server, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 200
    finally:
        server.stop()


def test_status_needs_the_token_when_the_api_is_not_loopback_only(recorder: Recorder) -> None:
    server = make_api(recorder, protect_status=True)
    try:
        assert exchange(server, b"GET /status HTTP/1.1\r\n\r\n")[0] == 401
        auth = f"GET /status HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        assert exchange(server, auth)[0] == 200
        for probe in (b"/healthz", b"/readyz", b"/metrics"):  # probes and the scrape carry no token
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
                conn.sendall(b"GET " + probe + b" HTTP/1.1\r\n\r\n")
                assert conn.recv(12).startswith(b"HTTP/1.0 200")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:9108", True),
        ("[::1]:9108", True),
        ("localhost:9108", True),
        ("0.0.0.0:9108", False),
        ("[::]:9108", False),
        ("watcher:9108", False),
    ],
)
def test_status_is_open_only_on_a_loopback_address(listen: str, loopback: bool) -> None:
    """The image listens on 0.0.0.0 (deploy/Dockerfile): there /status must need the token."""
    from watcher.config import Settings

    assert Settings(api_listen=listen).api_loopback_only is loopback


def test_an_alerts_generator_url_answers_with_its_incident_under_the_status_rules(recorder: Recorder) -> None:
    """GET /incidents/<id> (where an alert's generatorURL points): the incident's JSON, 404 for none,
    and the same token rule as /status."""
    incidents = {7: {"id": 7, "state": "held", "target": "local/tfs-1"}}
    server = make_api(recorder, protect_status=True, incident=incidents.get)
    try:
        assert exchange(server, b"GET /incidents/7 HTTP/1.1\r\n\r\n")[0] == 401
        code, doc = exchange(server, f"GET /incidents/7 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        assert code == 200 and doc == incidents[7]
        for missing in (b"8", b"x", b"-1", b"7/steps", b""):
            ask = b"GET /incidents/" + missing + f" HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
            assert exchange(server, ask)[0] == 404, missing
    finally:
        server.stop()
    open_api = make_api(recorder, incident=incidents.get)  # loopback only: no token, like /status
    try:
        assert exchange(open_api, b"GET /incidents/7 HTTP/1.1\r\n\r\n") == (200, incidents[7])
    finally:
        open_api.stop()
