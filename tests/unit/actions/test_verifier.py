"""Expected-version rules, status interpretation, smoke comparison and settling, without Docker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from watcher.actions.base import ActionError, Replica
from watcher.actions.verify import SmokeFileMissingError, Verifier, predictions_match
from watcher.model import Target

REPO_MODELS = Path(__file__).resolve().parents[3] / "models"


def test_expected_version_pinned_wins(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    assert Verifier.expected_version(tmp_path, "3", "5") == "3"


def test_expected_version_highest_numeric_folder(tmp_path: Path) -> None:
    for name in ("1", "2", "10", ".staging-11", "tmp", "12.bak"):
        (tmp_path / name).mkdir()
    (tmp_path / "99").write_text("a file, not a version")
    assert Verifier.expected_version(tmp_path, None, "1") == "10"


def test_expected_version_falls_back_to_before(tmp_path: Path) -> None:
    assert Verifier.expected_version(tmp_path, None, "4") == "4"  # empty repository
    assert Verifier.expected_version(tmp_path / "missing", None, "4") == "4"
    assert Verifier.expected_version(None, None, "4") == "4"
    assert Verifier.expected_version(None, None, None) is None


def test_predictions_match_with_tolerance() -> None:
    assert predictions_match([3.5, [4.0]], [3.5000001, [4.0]], 1e-5, 1e-6)
    assert not predictions_match([3.5, 4.0], [2.5, 4.0], 1e-5, 1e-6)
    assert not predictions_match([3.5], [3.5, 4.0], 1e-5, 1e-6)
    assert predictions_match([{"y": 1.0}], [{"y": 1.0000001}], 1e-5, 1e-6)
    assert not predictions_match([{"y": 1.0}], [{"z": 1.0}], 1e-5, 1e-6)


class FakeServing:
    """Answers /v1/models/<m> with ``status`` and predict with ``scale * x + offset``."""

    def __init__(self) -> None:
        self.status: tuple[int, Any] = (200, {"model_version_status": []})
        self.offset = 3.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(*fake.status)

            def do_POST(self) -> None:
                doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._send(200, {"predictions": [0.5 * x + fake.offset for x in doc["instances"]]})

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.server.server_address[1]
        self.replica = Replica(Target("tfsim-0"), f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", "half_plus_two")
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def versions(self, *entries: tuple[str, str, str, str]) -> None:
        self.status = (
            200,
            {
                "model_version_status": [
                    {"version": v, "state": s, "status": {"error_code": c, "error_message": m}}
                    for v, s, c, m in entries
                ]
            },
        )


@pytest.fixture
def serving() -> Iterator[FakeServing]:
    fake = FakeServing()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_served_version_and_load_failure(serving: FakeServing) -> None:
    v = Verifier(poll_s=0.01)
    serving.versions(("2", "AVAILABLE", "OK", ""), ("1", "END", "OK", ""))
    assert v.served_version(serving.replica) == "2"
    assert v.load_failed(serving.replica) is None
    serving.versions(("3", "END", "NOT_FOUND", "Could not find SavedModel"), ("2", "AVAILABLE", "OK", ""))
    assert v.served_version(serving.replica) == "2"
    assert v.load_failed(serving.replica) == "version 3: NOT_FOUND: Could not find SavedModel"


def test_wait_available_times_out_with_last_status(serving: FakeServing) -> None:
    serving.versions(("2", "LOADING", "OK", ""))
    with pytest.raises(ActionError, match=r"not AVAILABLE \(any version\) within 0.1s; last status: 2=LOADING"):
        Verifier(poll_s=0.02).wait_available(serving.replica, 0.1)
    serving.versions(("1", "AVAILABLE", "OK", ""))
    with pytest.raises(ActionError, match="version 2"):
        Verifier(poll_s=0.02).wait_available(serving.replica, 0.1, version="2")
    assert Verifier().wait_available(serving.replica, 1.0) == "1"


def test_wait_available_fails_fast_on_a_failed_load(serving: FakeServing) -> None:
    serving.versions(("2", "END", "DATA_LOSS", "Can't parse saved_model.pb"))
    with pytest.raises(ActionError, match="failed to load: version 2: DATA_LOSS"):
        Verifier(poll_s=0.02).wait_available(serving.replica, 30)


def test_smoke_against_the_stored_files(serving: FakeServing) -> None:
    v = Verifier()
    serving.versions(("2", "AVAILABLE", "OK", ""))
    v.smoke(serving.replica, "2", REPO_MODELS)  # 0.5x + 3 is version 2
    serving.offset = 2.0
    serving.versions(("1", "AVAILABLE", "OK", ""))
    with pytest.raises(ActionError) as info:
        v.smoke(serving.replica, "2", REPO_MODELS)
    msg = str(info.value)
    assert "expected [3.5, 4.0, 5.5], got [2.5, 3.0, 4.5]" in msg and "serves version 1" in msg
    with pytest.raises(SmokeFileMissingError):
        v.smoke(serving.replica, "42", REPO_MODELS)


def test_settle_needs_a_continuous_good_period() -> None:
    now = [0.0]
    values = iter([0.5, 0.01, 0.5, 0.01, float("nan"), 0.01, 0.01, 0.01, 0.01])

    def sleep(dt: float) -> None:
        now[0] += dt

    v = Verifier(poll_s=1.0, clock=lambda: now[0], sleep=sleep)
    assert v.settle(lambda: next(values), baseline=0.0, settle_s=3.0, tolerance=0.02) == 0.01
    assert now[0] == 6.0  # streak starts at t=3 (after the second bad value), lasts 3 s


def test_settle_gives_up_with_the_last_value() -> None:
    now = [0.0]

    def sleep(dt: float) -> None:
        now[0] += dt

    v = Verifier(poll_s=1.0, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(ActionError, match=r"last value 0\.3"):
        v.settle(lambda: 0.3, baseline=0.0, settle_s=2.0, tolerance=0.05, timeout_s=5.0)
