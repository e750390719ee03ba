"""Black-box tests of testbed/simulator/tfserving_sim.py.

Each test starts the simulator as a real subprocess on free loopback ports with a
temporary copy of models/ and checks what a client (or a log/metrics scraper) sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "testbed" / "simulator" / "tfserving_sim.py"
MODELS = REPO / "models"
MODEL = "half_plus_two"

GLOG_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}): (?P<level>[IWEF]) "
    r"(?P<file>[\w./-]+\.(?:cc|h|py)):(?P<line>\d+)\] (?P<msg>.*)$"
)
MONITORING_CONF = 'prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'
METRICS_PATH = "/monitoring/prometheus/metrics"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    method: str, url: str, body: bytes | str | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], str]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def jget(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    code, _, text = http("GET", url, timeout=timeout)
    return code, json.loads(text)


def jpost(url: str, obj: Any, timeout: float = 5.0) -> tuple[int, Any]:
    code, _, text = http("POST", url, json.dumps(obj), timeout=timeout)
    return code, json.loads(text)


class Sim:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, admin: int, log: Path, base: Path) -> None:
        self.proc, self.port, self.admin_port, self.log_path, self.base = proc, port, admin, log, base

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def model_url(self) -> str:
        return f"{self.url}/v1/models/{MODEL}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log(), re.M)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"log never matched {pattern!r}:\n{self.log()[-3000:]}")

    def predict(self, instances: Any, version: int | None = None) -> tuple[int, Any]:
        url = self.model_url + (f"/versions/{version}" if version else "") + ":predict"
        return jpost(url, {"instances": instances})

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return int(self.proc.returncode)


def wait_until(fn: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(step)
    raise AssertionError("condition not met in time")


def smoke(version: int) -> dict[str, Any]:
    return json.loads((MODELS / MODEL / str(version) / "smoke.json").read_text())


def write_version(base: Path, version: int, offset: float, load_seconds: float = 0.05) -> None:
    d = base / f".tmp-{version}"
    d.mkdir()
    (d / "model.json").write_text(
        json.dumps({"kind": "affine", "scale": 0.5, "offset": offset, "load_seconds": load_seconds})
    )
    d.rename(base / str(version))  # atomic publish, like a real model push


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    started: list[Sim] = []
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    (tmp_path / "monitoring.config").write_text(MONITORING_CONF)

    def start(
        faults: dict[str, Any] | None = None,
        monitoring: bool = True,
        state_dir: Path | None = None,
        extra: tuple[str, ...] = (),
        only_versions: tuple[int, ...] | None = None,
        wait: bool = True,
    ) -> Sim:
        base = models / MODEL
        if only_versions is not None:
            for d in base.iterdir():
                if d.name.isdigit() and int(d.name) not in only_versions:
                    shutil.move(str(d), str(tmp_path / f"parked-{d.name}"))
        port, admin = free_port(), free_port()
        args = [
            sys.executable,
            str(SIM),
            f"--rest_api_port={port}",
            "--port=8500",
            f"--model_name={MODEL}",
            f"--model_base_path={base}",
            "--file_system_poll_wait_seconds=0.2",
            "--max_num_load_retries=0",
            f"--admin_port={admin}",
            "--seed=7",
            *extra,
        ]
        if monitoring:
            args.append(f"--monitoring_config_file={tmp_path / 'monitoring.config'}")
        if state_dir is not None:
            args.append(f"--state_dir={state_dir}")
        env = dict(os.environ)
        env.pop("SIM_FAULTS", None)
        if faults is not None:
            env["SIM_FAULTS"] = json.dumps(faults)
        log = tmp_path / f"sim-{len(started)}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(args, stdout=err, stderr=err, env=env, cwd=tmp_path)
        sim = Sim(proc, port, admin, log, base)
        started.append(sim)
        if wait:
            sim.wait_log(r"NET_LOG: Entering the event loop", timeout=15)
        return sim

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(timeout=5)


# --------------------------------------------------------------------------- startup, status, predict


def test_startup_log_lines_are_glog(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim()
    log = sim.log()
    lines = [ln for ln in log.splitlines() if ln]
    for ln in lines:
        if ln.startswith("["):
            assert ln in (
                "[warn] getaddrinfo: address family for nodename not supported",
                "[evhttp_server.cc : 245] NET_LOG: Entering the event loop ...",
            )
        else:
            assert GLOG_RE.match(ln), ln
    base = sim.base
    expected = [
        f"I tensorflow_serving/model_servers/server.cc:88] Building single TensorFlow model file config:  "
        f"model_name: {MODEL} model_base_path: {base}",
        "I tensorflow_serving/model_servers/server_core.cc:464] Adding/updating models.",
        f"I tensorflow_serving/model_servers/server_core.cc:587]  (Re-)adding model: {MODEL}",
        f"Successfully reserved resources to load servable {{name: {MODEL} version: 2}}",
        f"] Approving load for servable version {{name: {MODEL} version: 2}}",
        f"] Loading servable version {{name: {MODEL} version: 2}}",
        f"reader.cc:32] Reading SavedModel from: {base}/2",
        "SavedModel load for tags { serve }; Status: success: OK. Took ",
        f"loader_harness.cc:87] Successfully loaded servable version {{name: {MODEL} version: 2}}",
        "Running gRPC ModelServer at 0.0.0.0:8500 ...",
        f"I tensorflow_serving/model_servers/server.cc:414] Exporting HTTP/REST API at:localhost:{sim.port} ...",
    ]
    pos = 0
    for e in expected:
        i = log.find(e, pos)
        assert i >= 0, f"missing or out of order: {e}\n{log}"
        pos = i
    # Healthy requests leave no trace in the log (like the real server).
    before = sim.log()
    for _ in range(5):
        assert sim.predict([1.0])[0] == 200
        assert jget(sim.model_url)[0] == 200
    assert sim.log() == before
    assert sim.stop() == 0


def test_status_predict_and_version_rollout(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(only_versions=(1,))
    code, st = jget(sim.model_url)
    assert code == 200
    assert st == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    s1, s2 = smoke(1), smoke(2)
    assert s1["predictions"] != s2["predictions"]
    assert sim.predict(s1["instances"]) == (200, {"predictions": s1["predictions"]})
    assert sim.predict(s1["instances"], version=1) == (200, {"predictions": s1["predictions"]})
    # nested lists and columnar format
    assert sim.predict([[1.0, 2.0], [3.0, 4.0]])[1] == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}
    assert sim.predict([{"x": 2.0}])[1] == {"predictions": [3.0]}
    assert jpost(sim.model_url + ":predict", {"inputs": [1.0, 2.0]}) == (200, {"outputs": [2.5, 3.0]})
    assert jpost(sim.model_url + ":predict", {"inputs": {"x": [[4.0]]}}) == (200, {"outputs": [[4.0]]})

    # Publish version 2: after a poll it is served and version 1 is unloaded.
    shutil.move(str(sim.base.parent.parent / "parked-2"), str(sim.base / "2"))
    wait_until(lambda: sim.predict(s2["instances"])[1] == {"predictions": s2["predictions"]}, timeout=5)
    wait_until(lambda: [v["state"] for v in jget(sim.model_url)[1]["model_version_status"]] == ["AVAILABLE", "END"])
    assert sim.predict([1.0], version=1)[0] == 404
    assert jget(sim.model_url + "/versions/2")[1]["model_version_status"][0]["state"] == "AVAILABLE"
    sim.wait_log(rf"Done unloading servable version \{{name: {MODEL} version: 1\}}")
    log = sim.log()
    order = [
        f"Successfully loaded servable version {{name: {MODEL} version: 2}}",
        f"Quiescing servable version {{name: {MODEL} version: 1}}",
        f"Done quiescing servable version {{name: {MODEL} version: 1}}",
        f"Unloading servable version {{name: {MODEL} version: 1}}",
        f"Done unloading servable version {{name: {MODEL} version: 1}}",
    ]
    assert [log.find(o) for o in order] == sorted(log.find(o) for o in order)
    assert all(log.find(o) >= 0 for o in order)

    # A slow version 3 shows LOADING while version 2 keeps serving, then AVAILABLE.
    write_version(sim.base, 3, offset=10.0, load_seconds=1.5)
    seen: list[dict[str, str]] = []

    def loading() -> bool:
        sts = {v["version"]: v["state"] for v in jget(sim.model_url)[1]["model_version_status"]}
        seen.append(sts)
        return sts.get("3") == "LOADING"

    wait_until(loading, timeout=5)
    assert seen[-1]["2"] == "AVAILABLE"
    assert sim.predict([2.0])[1] == {"predictions": [4.0]}
    wait_until(lambda: sim.predict([2.0])[1] == {"predictions": [11.0]}, timeout=6)
    assert sim.predict([2.0], version=3)[1] == {"predictions": [11.0]}
    st = jget(sim.model_url)[1]["model_version_status"]
    assert [(v["version"], v["state"]) for v in st] == [("3", "AVAILABLE"), ("2", "END"), ("1", "END")]


def test_metadata(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim()
    for url, ver in ((sim.model_url + "/metadata", "2"), (sim.model_url + "/versions/2/metadata", "2")):
        code, md = jget(url)
        assert code == 200
        assert md["model_spec"] == {"name": MODEL, "signature_name": "", "version": ver}
        sig = md["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert sig["method_name"] == "tensorflow/serving/predict"
        assert sig["inputs"]["x"]["dtype"] == "DT_FLOAT"
        assert "y" in sig["outputs"]
    assert jget(sim.model_url + "/versions/1/metadata") == (
        404,
        {"error": f"Servable not found for request: Specific({MODEL}, 1)"},
    )


# --------------------------------------------------------------------------- errors


def test_bad_requests_get_tf_serving_error_json(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(extra=("--max_body_bytes=4096",))
    mu = sim.model_url
    cases: list[tuple[str, str, str | bytes | None, int, str]] = [
        ("POST", mu + ":predict", '{"instances": [1.0', 400, r"^JSON Parse error: .* at offset: \d+$"),
        ("POST", mu + ":predict", "", 400, r"^JSON Parse error: The document is empty\. at offset: 0$"),
        ("POST", mu + ":predict", "not json", 400, r"^JSON Parse error: Invalid value\. at offset: 0$"),
        ("POST", mu + ":predict", '{"foo": 1}', 400, r"^Missing 'inputs' or 'instances' key$"),
        ("POST", mu + ":predict", '{"instances": []}', 400, r"^No values in 'instances' array$"),
        ("POST", mu + ":predict", '{"instances": 3}', 400, r"^Excepting 'instances' to be an list/array$"),
        (
            "POST",
            mu + ":predict",
            '{"instances": ["a"]}',
            400,
            r"^Failed to process element: 0 of 'instances'",
        ),
        (
            "POST",
            mu + ":predict",
            '{"instances": [1], "inputs": [1]}',
            400,
            r"^Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist $",
        ),
        (
            "POST",
            sim.url + "/v1/models/foo:predict",
            '{"instances": [1.0]}',
            404,
            r"^Servable not found for request: Latest\(foo\)$",
        ),
        (
            "POST",
            mu + "/versions/9:predict",
            '{"instances": [1.0]}',
            404,
            rf"^Servable not found for request: Specific\({MODEL}, 9\)$",
        ),
        ("GET", sim.url + "/v1/models/foo", None, 404, r"^Could not find any versions of model foo$"),
        ("GET", mu + "/versions/9", None, 404, rf"^Could not find version 9 of model {MODEL}$"),
        ("GET", mu + ":predict", None, 400, rf"^Malformed request: GET /v1/models/{MODEL}:predict$"),
        ("DELETE", mu, None, 400, rf"^Malformed request: DELETE /v1/models/{MODEL}$"),
        ("POST", mu, "{}", 400, rf"^Malformed request: POST /v1/models/{MODEL}$"),
        ("GET", sim.url + "/v1/models", None, 400, r"^Missing model name in request\.$"),
        ("GET", sim.url + "/nope", None, 404, r"."),
        ("GET", sim.url + "/", None, 404, r"."),
        ("POST", mu + ":predict", b'{"instances": [' + b"1.0," * 2000 + b"1.0]}", 413, r"exceeds"),
        ("POST", mu + ":classify", '{"examples": [{}]}', 400, r"^Expected classification signature"),
    ]
    for method, url, body, want_code, want_re in cases:
        code, headers, text = http(method, url, body)
        assert code == want_code, (method, url, code, text)
        assert headers.get("Content-Type", "").startswith("application/json"), (url, headers)
        obj = json.loads(text)
        assert list(obj) == ["error"], (url, obj)
        assert re.search(want_re, obj["error"]), (url, obj["error"])
        assert "Traceback" not in text

    # A garbage request line and an unknown HTTP method also get JSON, not HTML or a traceback.
    for raw in (b"BLAH\r\n\r\n", b"FROB /v1/models/x HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as s:
            s.sendall(raw)
            chunks = []
            while chunk := s.recv(65536):  # the server closes after an error like this
                chunks.append(chunk)
            reply = b"".join(chunks).decode(errors="replace")
        head, _, body_text = reply.partition("\r\n\r\n")
        assert head.split()[1] in ("400", "501"), head
        assert "error" in json.loads(body_text)
    # Still healthy afterwards, and nothing leaked a traceback into the log.
    assert sim.predict([1.0])[0] == 200
    assert "Traceback" not in sim.log()


# --------------------------------------------------------------------------- metrics


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            name, _, val = ln.rpartition(" ")
            out[name] = float(val)
    return out


def test_metrics_names_labels_and_counts(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim()
    code, headers, text = http("GET", sim.url + METRICS_PATH)
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    for t in (
        "# TYPE :tensorflow:serving:request_count counter",
        "# TYPE :tensorflow:serving:request_latency histogram",
        "# TYPE :tensorflow:serving:runtime_latency histogram",
        "# TYPE :tensorflow:cc:saved_model:load_attempt_count counter",
        "# TYPE :tensorflow:cc:saved_model:load_latency counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_virtual_memory_bytes gauge",
    ):
        assert t in text
    m = parse_metrics(text)
    path2 = f"{sim.base}/2"
    assert m[f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{path2}",status="success"}}'] == 1
    assert m[f':tensorflow:cc:saved_model:load_latency{{model_path="{path2}"}}'] > 0
    assert m["process_resident_memory_bytes"] > 1_000_000
    assert m["process_virtual_memory_bytes"] >= m["process_resident_memory_bytes"]

    for _ in range(3):
        assert sim.predict([1.0])[0] == 200
    assert sim.predict([1.0], version=7)[0] == 404
    assert http("POST", sim.model_url + ":predict", "{")[0] == 400
    m = parse_metrics(http("GET", sim.url + METRICS_PATH)[2])
    ok = f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}}'
    assert m[ok] == 3
    assert m[f':tensorflow:serving:request_count{{model_name="{MODEL}",status="NOT_FOUND"}}'] == 1
    assert m[f':tensorflow:serving:request_count{{model_name="{MODEL}",status="INVALID_ARGUMENT"}}'] == 1
    lab = f'model_name="{MODEL}",API="predict",entrypoint="REST",status="OK"'
    assert m[f":tensorflow:serving:request_latency_count{{{lab}}}"] == 3
    assert m[f':tensorflow:serving:request_latency_bucket{{{lab},le="+Inf"}}'] == 3
    buckets = [k for k in m if k.startswith(f":tensorflow:serving:request_latency_bucket{{{lab},")]
    assert len(buckets) == 34  # 33 exponential bounds (10 * 1.8^i) + Inf
    assert f':tensorflow:serving:request_latency_bucket{{{lab},le="10"}}' in m
    assert f':tensorflow:serving:request_latency_bucket{{{lab},le="18"}}' in m
    assert f':tensorflow:serving:request_latency_bucket{{{lab},le="32.4"}}' in m
    rl = f'model_name="{MODEL}",API="Predict",runtime="TF1"'
    assert m[f":tensorflow:serving:runtime_latency_count{{{rl}}}"] == 3
    assert m[":tensorflow:core:graph_runs{}"] == 3  # unlabeled counters print {}


def test_metrics_only_with_monitoring_config(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(monitoring=False)
    code, _, text = http("GET", sim.url + METRICS_PATH)
    assert code == 404 and "error" in json.loads(text)


# --------------------------------------------------------------------------- faults


def _statuses(sim: Sim, n: int) -> list[int]:
    return [sim.predict([1.0])[0] for _ in range(n)]


def test_error_ramp_share_and_determinism(start_sim: Callable[..., Sim]) -> None:
    faults = {"error_ramp": {"start": 0.4, "end": 0.4, "over_s": 1}}
    a = start_sim(faults=faults)
    codes = _statuses(a, 200)
    assert set(codes) <= {200, 500}
    share = codes.count(500) / len(codes)
    assert 0.28 <= share <= 0.52, share
    code, body = a.predict([1.0])
    while code != 500:
        code, body = a.predict([1.0])
    assert list(body) == ["error"]
    assert GLOG_RE.match(a.wait_log(r"^.*: E .*Executor failed to create kernel.*$").group(0))
    m = parse_metrics(http("GET", a.url + METRICS_PATH)[2])
    assert m[f':tensorflow:serving:request_count{{model_name="{MODEL}",status="INTERNAL"}}'] >= 1
    a.stop()
    # Same seed, same sequence of answers.
    b = start_sim(faults=faults)
    assert _statuses(b, 200) == codes


def test_error_ramp_rises_over_time(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(faults={"error_ramp": {"start": 0.0, "end": 1.0, "over_s": 3}})
    early = _statuses(sim, 40)
    time.sleep(3.0)
    late = _statuses(sim, 40)
    assert early.count(500) < late.count(500)
    assert late.count(500) == 40  # at the end of the ramp every request fails


def test_latency_creep_via_admin_api(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim()

    def timed() -> float:
        t0 = time.monotonic()
        assert sim.predict([1.0])[0] == 200
        return time.monotonic() - t0

    base = min(timed() for _ in range(3))
    assert jget(sim.admin + "/faults") == (200, {"faults": {}})
    code, listing = jpost(sim.admin + "/faults", {"latency_creep": {"start_ms": 300, "end_ms": 300, "over_s": 5}})
    assert code == 200 and listing["faults"]["latency_creep"]["params"]["start_ms"] == 300
    slow = timed()
    assert slow >= base + 0.25, (base, slow)
    sim.wait_log(r"\[sim\] fault added \(admin\): latency_creep")
    # replace, then delete by name
    assert jpost(sim.admin + "/faults", {"latency_creep": {"start_ms": 0, "end_ms": 0, "over_s": 1}})[0] == 200
    assert timed() < 0.25
    code, _, text = http("DELETE", sim.admin + "/faults/latency_creep")
    assert code == 200 and json.loads(text)["faults"] == {}
    assert http("DELETE", sim.admin + "/faults/latency_creep")[0] == 404
    # invalid specs are refused
    assert http("POST", sim.admin + "/faults", '{"nope": {}}')[0] == 400
    assert http("POST", sim.admin + "/faults", "[1]")[0] == 400
    assert http("POST", sim.admin + "/faults", '{"leak": {"mb_per_s": "x"}}')[0] == 400
    # add two, delete all
    assert jpost(sim.admin + "/faults", {"noise": {"lines_per_s": 1}, "error_ramp": {"start": 0}})[0] == 200
    assert sorted(jget(sim.admin + "/faults")[1]["faults"]) == ["error_ramp", "noise"]
    code, _, text = http("DELETE", sim.admin + "/faults")
    assert code == 200 and sorted(json.loads(text)["removed"]) == ["error_ramp", "noise"]
    assert jget(sim.admin + "/status")[1]["serving_version"] == 2


def test_crash_aborts_after_fatal_line(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(faults={"crash": {"after_s": 1.0}})
    assert sim.predict([1.0])[0] == 200
    rc = sim.proc.wait(timeout=10)
    assert rc == -signal.SIGABRT
    fatal = [ln for ln in sim.log().splitlines() if GLOG_RE.match(ln) and ": F " in ln]
    assert len(fatal) == 1 and "Check failed:" in fatal[0]


def test_hang_makes_status_time_out(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim()
    assert jget(sim.model_url)[0] == 200
    assert jpost(sim.admin + "/faults", {"hang": {"after_s": 0}})[0] == 200
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        http("GET", sim.model_url, timeout=1.0)
    assert sim.proc.poll() is None  # alive
    assert jget(sim.admin + "/status")[1]["hanging"] is True
    assert http("DELETE", sim.admin + "/faults/hang")[0] == 200
    assert jget(sim.model_url)[0] == 200


def test_fail_load_keeps_old_version_serving(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(faults={"fail_load": {"versions": [3]}})
    write_version(sim.base, 3, offset=10.0)
    wait_until(lambda: any(v["version"] == "3" for v in jget(sim.model_url)[1]["model_version_status"]))
    wait_until(
        lambda: {v["version"]: v["state"] for v in jget(sim.model_url)[1]["model_version_status"]}.get("3") == "END"
    )
    st = {v["version"]: v for v in jget(sim.model_url)[1]["model_version_status"]}
    assert st["2"]["state"] == "AVAILABLE"
    assert st["3"]["status"]["error_code"] == "NOT_FOUND"
    assert "Could not find meta graph def matching supplied tags" in st["3"]["status"]["error_message"]
    assert sim.predict([2.0]) == (200, {"predictions": [4.0]})
    assert sim.predict([2.0], version=3)[0] == 404
    sim.wait_log(
        r"E tensorflow_serving/util/retrier.cc:\d+\] "
        rf"Loading servable: \{{name: {MODEL} version: 3\}} failed: NOT_FOUND: "
    )
    sim.wait_log(
        r"E tensorflow_serving/core/aspired_versions_manager.cc:\d+\] "
        rf"Servable \{{name: {MODEL} version: 3\}} cannot be loaded: NOT_FOUND: "
    )
    sim.wait_log(r"SavedModel load for tags \{ serve \}; Status: fail: NOT_FOUND: ")

    # A version folder without model.json fails with the real SavedModel wording.
    (sim.base / "4").mkdir()
    wait_until(
        lambda: {v["version"]: v["state"] for v in jget(sim.model_url)[1]["model_version_status"]}.get("4") == "END"
    )
    v4 = jget(sim.model_url + "/versions/4")[1]["model_version_status"][0]
    assert v4["status"] == {
        "error_code": "NOT_FOUND",
        "error_message": f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {sim.base}/4",
    }
    assert sim.predict([2.0]) == (200, {"predictions": [4.0]})
    m = parse_metrics(http("GET", sim.url + METRICS_PATH)[2])
    for v in (3, 4):
        key = f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{sim.base}/{v}",status="fail"}}'
        assert m[key] == 1


def test_stale_on_restart_pins_old_version(start_sim: Callable[..., Sim], tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    sim = start_sim(state_dir=state)
    assert sim.predict([2.0]) == (200, {"predictions": [4.0]})
    assert jpost(sim.admin + "/faults", {"stale_on_restart": {"version": 1}})[0] == 200
    assert sim.predict([2.0]) == (200, {"predictions": [4.0]})  # this run is unaffected
    assert sim.stop() == 0
    again = start_sim(state_dir=state)
    assert again.predict([2.0]) == (200, {"predictions": [3.0]})  # version 1: 0.5x+2
    st = jget(again.model_url)[1]["model_version_status"]
    assert [(v["version"], v["state"]) for v in st] == [("1", "AVAILABLE")]
    assert jget(again.admin + "/faults")[1]["faults"]["stale_on_restart"]["source"] == "state_dir"
    # removing the fault un-pins for the next start
    assert http("DELETE", again.admin + "/faults/stale_on_restart")[0] == 200
    assert again.stop() == 0
    third = start_sim(state_dir=state)
    assert third.predict([2.0]) == (200, {"predictions": [4.0]})


def test_stale_on_restart_from_env(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(faults={"stale_on_restart": {"version": 1}})
    assert sim.predict(smoke(1)["instances"]) == (200, {"predictions": smoke(1)["predictions"]})


def read_rss(pid: int) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_leak_grows_rss_and_warns(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(monitoring=True)
    rss0 = read_rss(sim.proc.pid)
    assert jpost(sim.admin + "/faults", {"leak": {"mb_per_s": 150, "max_mb": 120}})[0] == 200
    wait_until(lambda: read_rss(sim.proc.pid) > rss0 + 100 * 2**20, timeout=8)
    sim.wait_log(r"W \S+cpu_allocator_impl\.cc:\d+\] Allocation of \d+ exceeds 10% of free system memory\.")
    sim.wait_log(r"W \S+bfc_allocator\.cc:\d+\] Allocator \(cpu\) ran out of memory trying to allocate ")
    code, body = sim.predict([1.0])
    assert code == 429
    assert body["error"].startswith("OOM when allocating tensor with shape[")
    m = parse_metrics(http("GET", sim.url + METRICS_PATH)[2])
    assert m["process_resident_memory_bytes"] > rss0 + 100 * 2**20
    assert m[f':tensorflow:serving:request_count{{model_name="{MODEL}",status="RESOURCE_EXHAUSTED"}}'] == 1
    assert http("DELETE", sim.admin + "/faults/leak")[0] == 200
    wait_until(lambda: sim.predict([1.0])[0] == 200, timeout=5)


def test_noise_prints_real_looking_lines(start_sim: Callable[..., Sim]) -> None:
    sim = start_sim(faults={"noise": {"lines_per_s": 20}})
    n0 = len(sim.log().splitlines())
    time.sleep(1.0)
    new = sim.log().splitlines()[n0:]
    assert len(new) >= 10
    assert all(GLOG_RE.match(ln) for ln in new)
    assert all(GLOG_RE.match(ln).group("level") in "IW" for ln in new)  # type: ignore[union-attr]


def test_concurrent_requests(start_sim: Callable[..., Sim]) -> None:
    import concurrent.futures

    sim = start_sim(faults={"latency_creep": {"start_ms": 200, "end_ms": 200, "over_s": 1}})
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        codes = list(ex.map(lambda _: sim.predict([1.0])[0], range(16)))
    assert codes == [200] * 16
    assert time.monotonic() - t0 < 2.0  # served in parallel, not 16 * 0.2 s
