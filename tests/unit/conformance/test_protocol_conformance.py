"""Every :class:`~watcher.actions.protocols.ServingProtocol` adapter passes the same checks, over
answers recorded from the real servers (MLServer 1.7.1 and KServe 0.16.0 on loopback, see
``tests/integration/test_protocols_real.py``; TF Serving from the simulator's and TF Serving's REST
docs; TorchServe from its management-API docs, as TorchServe needs Java).

A small HTTP server replays, per adapter, three recorded situations of model ``lin``: serving
version 2; up but the model failed to load; and a proxy in front answering 502 with HTML. Adapters
are found with :func:`tests.plugins.implementations`, so a new one fails
``test_every_adapter_has_recorded_answers`` until it has its recordings.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from testbed.ports import LOOPBACK
from tests.plugins import implementations
from watcher.actions.base import ActionError, Replica
from watcher.actions.protocols import KServeV1, OpenInferenceV2, ServingProtocol, TFServingREST, TorchServe
from watcher.actions.verify import Verifier
from watcher.model import Target

Answers = dict[tuple[str, str], tuple[int, Any]]  # (method, path) -> (status, JSON body or raw text)
INSTANCES = [[1.0], [2.0], [5.0]]
V2_PREDICTIONS = [2.0, 5.0, 14.0]  # lin version 2: 3x - 1
NOT_FOUND_TS = (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: lin"})

RECORDED: dict[type[ServingProtocol], dict[str, Answers]] = {
    TFServingREST: {
        "serving": {
            ("GET", "/v1/models/lin"): (
                200,
                {
                    "model_version_status": [
                        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
                        {"version": "1", "state": "END", "status": {"error_code": "OK", "error_message": ""}},
                    ]
                },
            ),
            ("POST", "/v1/models/lin:predict"): (200, {"predictions": V2_PREDICTIONS}),
        },
        "failed": {
            ("GET", "/v1/models/lin"): (
                200,
                {
                    "model_version_status": [
                        {
                            "version": "2",
                            "state": "END",
                            "status": {"error_code": "NOT_FOUND", "error_message": "Could not find SavedModel .pb"},
                        }
                    ]
                },
            ),
            ("POST", "/v1/models/lin:predict"): (404, {"error": "Servable not found for request: Latest(lin)"}),
        },
    },
    OpenInferenceV2: {  # MLServer 1.7.1
        "serving": {
            ("GET", "/v2/health/live"): (200, ""),
            ("GET", "/v2/models/lin/ready"): (200, ""),
            ("POST", "/v2/repository/index"): (
                200,
                [
                    {"name": "lin", "version": "1", "state": "READY", "reason": ""},
                    {"name": "lin", "version": "2", "state": "READY", "reason": ""},
                ],
            ),
            ("POST", "/v2/models/lin/infer"): (
                200,
                {
                    "model_name": "lin",
                    "model_version": "2",
                    "id": "81ed0820",
                    "parameters": {},
                    "outputs": [
                        {
                            "name": "predict",
                            "shape": [3, 1],
                            "datatype": "FP64",
                            "parameters": {"content_type": "np"},
                            "data": [1.9999999999999973, 4.999999999999998, 14.0],
                        }
                    ],
                },
            ),
        },
        "failed": {
            ("GET", "/v2/health/live"): (200, ""),
            ("GET", "/v2/models/lin/ready"): (404, {"error": "Model lin not found"}),
            ("POST", "/v2/repository/index"): (
                200,
                [{"name": "lin", "version": "2", "state": "UNAVAILABLE", "reason": ""}],
            ),
            ("POST", "/v2/models/lin/infer"): (404, {"error": "Model lin not found"}),
        },
    },
    KServeV1: {  # KServe 0.16.0
        "serving": {
            ("GET", "/v1/models/lin"): (200, {"name": "lin", "ready": True}),
            ("POST", "/v1/models/lin:predict"): (200, {"predictions": V2_PREDICTIONS}),
        },
        "failed": {
            ("GET", "/v1/models/lin"): (503, {"error": "Model with name lin is not ready."}),
            ("POST", "/v1/models/lin:predict"): (503, {"error": "Model with name lin is not ready."}),
        },
    },
    TorchServe: {  # the management API's describe answer, as TorchServe documents it
        "serving": {
            ("GET", "/ping"): (200, {"status": "Healthy"}),
            ("GET", "/models/lin"): (
                200,
                [
                    {
                        "modelName": "lin",
                        "modelVersion": "2",
                        "modelUrl": "lin.mar",
                        "runtime": "python",
                        "minWorkers": 1,
                        "maxWorkers": 1,
                        "batchSize": 1,
                        "maxBatchDelay": 100,
                        "loadedAtStartup": True,
                        "workers": [{"id": "9000", "startTime": "2023-01-27T07:53:42.945Z", "status": "READY"}],
                    }
                ],
            ),
            ("POST", "/predictions/lin"): (200, V2_PREDICTIONS),
        },
        "failed": {
            ("GET", "/ping"): (500, {"status": "Unhealthy"}),
            ("GET", "/models/lin"): NOT_FOUND_TS,
            ("POST", "/predictions/lin"): NOT_FOUND_TS,
        },
    },
}
# What each protocol can say about the version it serves: None = it cannot.
SERVED: dict[type[ServingProtocol], str | None] = {
    TFServingREST: "2",
    OpenInferenceV2: "2",
    KServeV1: None,
    TorchServe: "2",
}
FAILED_WORDS: dict[type[ServingProtocol], str] = {
    TFServingREST: "no version AVAILABLE",
    OpenInferenceV2: "Model lin not found",
    KServeV1: "Model with name lin is not ready",
    TorchServe: "Unhealthy",
}


class Replay:
    """Answers recorded requests; anything else is 404 (as the servers answer an unknown path)."""

    def __init__(self) -> None:
        self.answers: Answers = {}
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                if method == "POST":
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code, body = replay.answers.get((method, self.path), (404, {"error": f"no route {self.path}"}))
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    r = Replay()
    yield r
    r.server.shutdown()
    r.server.server_close()


def _adapters() -> set[type[ServingProtocol]]:
    return implementations(ServingProtocol)


def test_every_adapter_has_recorded_answers() -> None:
    assert _adapters() == set(RECORDED) == set(SERVED) == set(FAILED_WORDS)


@pytest.fixture(params=sorted(RECORDED, key=lambda c: c.name), ids=lambda c: c.name)
def rig(request: pytest.FixtureRequest, replay: Replay) -> tuple[type[ServingProtocol], Verifier, Replica, Replay]:
    cls: type[ServingProtocol] = request.param
    # TorchServe's management API on the same replay port (offset 0) instead of port + 1
    overrides = {"torchserve": TorchServe(management_port_offset=0)}
    verifier = Verifier(poll_s=0.02, protocols=overrides)
    url = f"http://{LOOPBACK}:{replay.port}"
    replica = Replica(Target(f"{cls.name}-0"), url.removeprefix("http://"), url, "lin", protocol=cls.name)
    return cls, verifier, replica, replay


def test_serving_model_is_ready_reports_what_it_can_and_predicts(
    rig: tuple[type[ServingProtocol], Verifier, Replica, Replay],
) -> None:
    cls, verifier, replica, replay = rig
    replay.answers = RECORDED[cls]["serving"]
    adapter = verifier.adapter(replica)
    assert type(adapter) is cls
    check = adapter.ready(replica)
    assert check.ok, check.why
    assert verifier.served_version(replica) == SERVED[cls]
    assert verifier.reports_versions(replica) is (SERVED[cls] is not None)
    assert verifier.wait_available(replica, timeout_s=1) == SERVED[cls]
    assert verifier.load_failed(replica) is None
    got = verifier.predict(replica, INSTANCES)
    assert [round(y, 6) for y in got] == V2_PREDICTIONS


def test_model_that_failed_to_load_is_not_ready(rig: tuple[type[ServingProtocol], Verifier, Replica, Replay]) -> None:
    cls, verifier, replica, replay = rig
    replay.answers = RECORDED[cls]["failed"]
    check = verifier.adapter(replica).ready(replica)
    assert not check.ok and FAILED_WORDS[cls] in check.why, check.why
    assert str(replica) in check.why or cls is TFServingREST
    assert verifier.served_version(replica) is None
    with pytest.raises(ActionError, match=r"not AVAILABLE|failed to load"):
        verifier.wait_available(replica, timeout_s=0.3)
    with pytest.raises(ActionError, match="smoke prediction HTTP"):
        verifier.predict(replica, INSTANCES)


def test_a_proxy_error_page_is_an_error_not_an_answer(
    rig: tuple[type[ServingProtocol], Verifier, Replica, Replay],
) -> None:
    """An HTML 502 from something in front of the server: not ready, no version, predict fails."""
    cls, verifier, replica, replay = rig
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    replay.answers = {key: (502, page) for key in RECORDED[cls]["serving"]}
    assert not verifier.adapter(replica).ready(replica).ok
    assert verifier.served_version(replica) is None
    with pytest.raises(ActionError, match="502"):
        verifier.predict(replica, INSTANCES)
    with pytest.raises(ActionError):
        verifier.wait_available(replica, timeout_s=0.2)


def test_unreachable_server(rig: tuple[type[ServingProtocol], Verifier, Replica, Replay]) -> None:
    _, verifier, replica, _ = rig
    down = dataclasses.replace(replica, rest_url=f"http://{LOOPBACK}:1", upstream=f"{LOOPBACK}:1")
    check = verifier.adapter(down).ready(down)
    assert not check.ok and "unreachable" in check.why and str(down) in check.why
    assert verifier.served_version(down) is None
    with pytest.raises(ActionError, match="unreachable"):
        verifier.predict(down, INSTANCES)
