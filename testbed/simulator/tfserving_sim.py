#!/usr/bin/env python3
"""A stdlib-only stand-in for tensorflow/serving (tensorflow_model_server).

From the outside it behaves like TF Serving's REST side: the same flags, the same
``/v1/models/...`` JSON, the same error JSON and status codes, Prometheus metrics
with TF Serving's names (only with ``--monitoring_config_file``), and glog lines on
stderr worded like the real server's.  Models are tiny JSON descriptions
(``<base>/<version>/model.json``) so that each version gives checkable outputs.

On top of that it can inject failures (``SIM_FAULTS`` env or the admin API on
``--admin_port``): leak, error_ramp, latency_creep, crash, hang, fail_load,
stale_on_restart and noise.  Lines that only the simulator prints use the
source location ``tfserving_sim.py:0`` so a log parser can tell them apart.

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import random
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

# --------------------------------------------------------------------------- logging

_LOG_LOCK = threading.Lock()

# Source locations copied from real TF Serving 2.x logs.
L_BUILD_CONFIG = "tensorflow_serving/model_servers/server.cc:88"
L_ADDING = "tensorflow_serving/model_servers/server_core.cc:464"
L_READDING = "tensorflow_serving/model_servers/server_core.cc:587"
L_FINISHED_ADDING = "tensorflow_serving/model_servers/server_core.cc:486"
L_RESERVED = "tensorflow_serving/core/basic_manager.cc:740"
L_APPROVING = "tensorflow_serving/core/loader_harness.cc:66"
L_LOADING = "tensorflow_serving/core/loader_harness.cc:74"
L_LOADED = "tensorflow_serving/core/loader_harness.cc:87"
L_QUIESCING = "tensorflow_serving/core/loader_harness.cc:138"
L_DONE_QUIESCING = "tensorflow_serving/core/loader_harness.cc:145"
L_UNLOADING = "tensorflow_serving/core/loader_harness.cc:120"
L_DONE_UNLOADING = "tensorflow_serving/core/loader_harness.cc:128"
L_ENCOUNTERED = "tensorflow_serving/core/loader_harness.cc:171"
L_RELEASE = "./tensorflow_serving/core/simple_loader.h:294"
L_RETRY = "tensorflow_serving/util/retrier.cc:36"
L_RETRY_FAILED = "tensorflow_serving/util/retrier.cc:40"
L_RETRY_EXHAUSTED = "tensorflow_serving/util/retrier.cc:48"
L_CANNOT_LOAD = "tensorflow_serving/core/aspired_versions_manager.cc:359"
L_NO_VERSIONS = "tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc:267"
L_READ_SM = "external/org_tensorflow/tensorflow/cc/saved_model/reader.cc:32"
L_READ_META = "external/org_tensorflow/tensorflow/cc/saved_model/reader.cc:55"
L_READ_DEBUG = "external/org_tensorflow/tensorflow/cc/saved_model/reader.cc:93"
L_RESTORING = "external/org_tensorflow/tensorflow/cc/saved_model/loader.cc:206"
L_INIT_OP = "external/org_tensorflow/tensorflow/cc/saved_model/loader.cc:190"
L_SM_STATUS = "external/org_tensorflow/tensorflow/cc/saved_model/loader.cc:277"
L_WARMUP = "tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc:59"
L_PROFILER = "tensorflow_serving/model_servers/server.cc:367"
L_GRPC = "tensorflow_serving/model_servers/server.cc:393"
L_REST = "tensorflow_serving/model_servers/server.cc:414"
L_CPU_ALLOC = "external/org_tensorflow/tensorflow/core/framework/cpu_allocator_impl.cc:82"
L_BFC = "external/org_tensorflow/tensorflow/core/common_runtime/bfc_allocator.cc:290"
L_BFC_CHECK = "external/org_tensorflow/tensorflow/core/common_runtime/bfc_allocator.cc:458"
L_OP_KERNEL = "external/org_tensorflow/tensorflow/core/framework/op_kernel.cc:1745"
L_EXECUTOR = "external/org_tensorflow/tensorflow/core/common_runtime/executor.cc:1197"
L_SIM = "tfserving_sim.py:0"
SM_STATUS = "SavedModel load for tags { serve }; Status:"


def _raw(line: str) -> None:
    with _LOG_LOCK:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def glog(level: str, where: str, msg: str) -> None:
    """Write one glog line: ``2024-05-01 10:00:00.123456: I file.cc:74] msg``."""
    ts = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
    _raw(f"{ts}: {level} {where}] {msg}")


def sim_log(msg: str, level: str = "I") -> None:
    glog(level, L_SIM, msg)


def sid(name: str, version: int) -> str:
    return f"{{name: {name} version: {version}}}"


# --------------------------------------------------------------------------- metrics


def _mangle(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", ":", name)


def _fmt_num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    s = f"{v:.6g}"
    return s


LATENCY_BOUNDS = [10.0 * 1.8**i for i in range(33)]


class Metrics:
    """Counters, gauges and histograms printed the way prometheus_exporter.cc does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # name -> (type, {label tuple: value})
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._hists: dict[str, dict[tuple[tuple[str, str], ...], list[float]]] = {}
        self._hist_bounds: dict[str, list[float]] = {}

    def declare_counter(self, name: str) -> None:
        with self._lock:
            self._counters.setdefault(name, {})

    def declare_hist(self, name: str, bounds: list[float]) -> None:
        with self._lock:
            self._hists.setdefault(name, {})
            self._hist_bounds[name] = bounds

    def inc(self, name: str, labels: dict[str, str] | None = None, by: float = 1) -> None:
        key = tuple((labels or {}).items())
        with self._lock:
            d = self._counters.setdefault(name, {})
            d[key] = d.get(key, 0) + by

    def observe(self, name: str, labels: dict[str, str], value: float) -> None:
        key = tuple(labels.items())
        with self._lock:
            bounds = self._hist_bounds[name]
            d = self._hists.setdefault(name, {})
            st = d.get(key)
            if st is None:
                st = [0.0] * (len(bounds) + 1) + [0.0, 0.0]  # buckets..., +Inf, sum, count
                d[key] = st
            for i, b in enumerate(bounds):
                if value < b:
                    st[i] += 1
                    break
            else:
                st[len(bounds)] += 1
            st[-2] += value
            st[-1] += 1

    @staticmethod
    def _labels(key: tuple[tuple[str, str], ...], extra: str = "") -> str:
        parts = []
        for k, v in key:
            k2 = re.sub(r"[^a-zA-Z0-9_]", "_", k)
            v2 = str(v).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{k2}="{v2}"')
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}"

    def render(self, gauges: dict[str, float]) -> str:
        out: list[str] = []
        with self._lock:
            names = sorted(set(self._counters) | set(self._hists))
            for raw in names:
                pname = _mangle(raw)
                if raw in self._counters:
                    out.append(f"# TYPE {pname} counter")
                    for key, val in self._counters[raw].items():
                        out.append(f"{pname}{self._labels(key)} {int(val)}")
                else:
                    out.append(f"# TYPE {pname} histogram")
                    bounds = self._hist_bounds[raw]
                    for key, st in self._hists[raw].items():
                        cum = 0.0
                        for i, b in enumerate([*bounds, float("inf")]):
                            cum += st[i]
                            le = f'le="{_fmt_num(b)}"'
                            out.append(f"{pname}_bucket{self._labels(key, le)} {int(cum)}")
                        out.append(f"{pname}_sum{self._labels(key)} {_fmt_num(st[-2])}")
                        out.append(f"{pname}_count{self._labels(key)} {int(st[-1])}")
        for gname, gval in gauges.items():
            out.append(f"# TYPE {gname} gauge")
            out.append(f"{gname} {int(gval)}")
        return "\n".join(out) + "\n"


M_REQ_COUNT = "/tensorflow/serving/request_count"
M_REQ_LAT = "/tensorflow/serving/request_latency"
M_RUN_LAT = "/tensorflow/serving/runtime_latency"
M_LOAD_ATTEMPT = "/tensorflow/cc/saved_model/load_attempt_count"
M_LOAD_LAT = "/tensorflow/cc/saved_model/load_latency"
M_GRAPH_RUNS = "/tensorflow/core/graph_runs"
M_GRAPH_RUN_TIME = "/tensorflow/core/graph_run_time_usecs"


# --------------------------------------------------------------------------- memory helpers


def _kib_field(path: str, field: str) -> int:
    """A ``Name:   123 kB`` line of a /proc file, in bytes (0 when absent or unreadable)."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def proc_status_bytes(field: str) -> int:
    return _kib_field("/proc/self/status", field)


def meminfo_bytes(field: str) -> int:
    return _kib_field("/proc/meminfo", field)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            s = f.read().strip()
    except OSError:
        return None
    if not s or s == "max":
        return None
    try:
        return int(s)
    except ValueError:
        return None


def cgroup_memory_limit() -> int | None:
    """The container's memory limit in bytes (cgroup v2 or v1), or None if unlimited/unknown."""
    total = meminfo_bytes("MemTotal") or (1 << 62)
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        v = _read_int(p)
        if v is not None and 0 < v < total:
            return v
    return None


def cgroup_memory_usage() -> int | None:
    for p in ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
        v = _read_int(p)
        if v is not None:
            return v
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n:.2f}GiB"


# --------------------------------------------------------------------------- errors


class TFError(Exception):
    """A TF-style status: code name (e.g. NOT_FOUND) + message."""

    HTTP: ClassVar[dict[str, int]] = {
        "CANCELLED": 499,
        "UNKNOWN": 500,
        "INVALID_ARGUMENT": 400,
        "DEADLINE_EXCEEDED": 504,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "PERMISSION_DENIED": 403,
        "RESOURCE_EXHAUSTED": 429,
        "FAILED_PRECONDITION": 400,
        "ABORTED": 409,
        "OUT_OF_RANGE": 400,
        "UNIMPLEMENTED": 501,
        "INTERNAL": 500,
        "UNAVAILABLE": 503,
        "DATA_LOSS": 500,
        "UNAUTHENTICATED": 401,
    }

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return self.HTTP.get(self.code, 500)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


_PY_JSON_TO_RAPIDJSON = [
    ("Expecting value", "Invalid value."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Expecting ',' delimiter", "Missing a comma or '}' after an object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Extra data", "The document root must not be followed by other values."),
]


def parse_json_like_rapidjson(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TFError(
            "INVALID_ARGUMENT", f"JSON Parse error: Invalid encoding in string. at offset: {e.start}"
        ) from None
    if not text.strip():
        raise TFError("INVALID_ARGUMENT", "JSON Parse error: The document is empty. at offset: 0")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        msg = "Invalid value."
        for py, rj in _PY_JSON_TO_RAPIDJSON:
            if e.msg.startswith(py):
                msg = rj
                break
        raise TFError("INVALID_ARGUMENT", f"JSON Parse error: {msg} at offset: {e.pos}") from None
    except RecursionError:
        raise TFError("INVALID_ARGUMENT", "JSON Parse error: Invalid value. at offset: 0") from None


# --------------------------------------------------------------------------- model repository


class Version:
    def __init__(self, version: int, path: str) -> None:
        self.version = version
        self.path = path
        self.state = "START"
        self.error_code = "OK"
        self.error_message = ""
        self.desc: dict[str, Any] = {}
        self.ballast: bytes | None = None


def _sig_tensor(name: str) -> dict[str, Any]:
    return {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": True},
        "name": f"{name}:0",
    }


class ModelManager:
    """Polls ``base_path`` like FileSystemStoragePathSource and loads the latest version."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.name: str = sim.args.model_name
        self.base: str = sim.args.model_base_path
        self.lock = threading.RLock()
        self.versions: dict[int, Version] = {}
        self.serving: int | None = None
        self.pinned: int | None = None
        self._failed_seen: set[int] = set()

    # -- disk
    def list_versions(self) -> list[int]:
        try:
            entries = os.listdir(self.base)
        except OSError:
            return []
        out = []
        for e in entries:
            if e.isdigit() and os.path.isdir(os.path.join(self.base, e)):
                out.append(int(e))
        return sorted(out)

    def _version_path(self, v: int) -> str:
        for e in os.listdir(self.base) if os.path.isdir(self.base) else []:
            if e.isdigit() and int(e) == v:
                return os.path.join(self.base, e)
        return os.path.join(self.base, str(v))

    # -- status API
    def status(self, version: int | None) -> dict[str, Any]:
        with self.lock:
            if version is not None:
                v = self.versions.get(version)
                if v is None or v.state == "START":
                    raise TFError("NOT_FOUND", f"Could not find version {version} of model {self.name}")
                vs = [v]
            else:
                vs = [v for _, v in sorted(self.versions.items(), reverse=True) if v.state != "START"]
                if not vs:
                    raise TFError("NOT_FOUND", f"Could not find any versions of model {self.name}")
            return {
                "model_version_status": [
                    {
                        "version": str(v.version),
                        "state": v.state,
                        "status": {"error_code": v.error_code, "error_message": v.error_message},
                    }
                    for v in vs
                ]
            }

    def resolve(self, name: str, version: int | None) -> Version:
        with self.lock:
            if name == self.name:
                if version is None:
                    if self.serving is not None:
                        return self.versions[self.serving]
                else:
                    v = self.versions.get(version)
                    if v is not None and v.state == "AVAILABLE":
                        return v
        if version is None:
            raise TFError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        raise TFError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")

    # -- loading
    def _read_model(self, v: Version) -> dict[str, Any]:
        mj = os.path.join(v.path, "model.json")
        fail = self.sim.faults.fail_load_error(v.version)
        if fail is not None:
            raise fail
        if not os.path.isfile(mj):
            raise TFError(
                "NOT_FOUND",
                f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {v.path}",
            )
        try:
            with open(mj, encoding="utf-8") as f:
                desc = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError):
            raise TFError("DATA_LOSS", f"Can't parse {v.path}/saved_model.pb as binary proto") from None
        if not isinstance(desc, dict) or desc.get("kind", "affine") != "affine":
            raise TFError("INVALID_ARGUMENT", f"Unsupported model kind in {mj}")
        try:
            desc["scale"] = float(desc.get("scale", 1.0))
            desc["offset"] = float(desc.get("offset", 0.0))
            desc["load_seconds"] = max(0.0, float(desc.get("load_seconds", 0.0)))
            desc["memory_mb"] = max(0.0, float(desc.get("memory_mb", 0.0)))
            desc["predict_ms"] = max(0.0, float(desc.get("predict_ms", 0.0)))
        except (TypeError, ValueError):
            raise TFError(
                "INVALID_ARGUMENT",
                "Could not find meta graph def matching supplied tags: { serve }. To inspect available "
                "tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`",
            ) from None
        desc.setdefault("input_name", "x")
        desc.setdefault("output_name", "y")
        return desc

    def _load_once(self, v: Version) -> None:
        t0 = time.monotonic()
        glog("I", L_READ_SM, f"Reading SavedModel from: {v.path}")
        metrics = self.sim.metrics
        try:
            desc = self._read_model(v)
            glog("I", L_READ_META, "Reading meta graph with tags { serve }")
            glog("I", L_READ_DEBUG, f"Reading SavedModel debug info (if present) from: {v.path}")
            time.sleep(desc["load_seconds"])
            glog("I", L_RESTORING, "Restoring SavedModel bundle.")
            glog("I", L_INIT_OP, f"Running initialization op on SavedModel bundle at path: {v.path}")
            if desc["memory_mb"] > 0:
                v.ballast = b"\x02" * int(desc["memory_mb"] * 1024 * 1024)
        except TFError as e:
            took = int((time.monotonic() - t0) * 1e6)
            glog("I", L_SM_STATUS, f"{SM_STATUS} fail: {e}. Took {took} microseconds.")
            metrics.inc(M_LOAD_ATTEMPT, {"model_path": v.path, "status": "fail"})
            raise
        took = int((time.monotonic() - t0) * 1e6)
        glog("I", L_SM_STATUS, f"{SM_STATUS} success: OK. Took {took} microseconds.")
        metrics.inc(M_LOAD_ATTEMPT, {"model_path": v.path, "status": "success"})
        metrics.inc(M_LOAD_LAT, {"model_path": v.path}, by=took)
        glog("I", L_WARMUP, f"No warmup data file found at {v.path}/assets.extra/tf_serving_warmup_requests")
        v.desc = desc

    def load(self, version: int) -> bool:
        """Load one version with TF Serving's retry semantics. Returns True on success."""
        path = self._version_path(version)
        with self.lock:
            v = Version(version, path)
            self.versions[version] = v
        desc = f"Loading servable: {sid(self.name, version)}"
        glog("I", L_RESERVED, f"Successfully reserved resources to load servable {sid(self.name, version)}")
        glog("I", L_APPROVING, f"Approving load for servable version {sid(self.name, version)}")
        with self.lock:
            v.state = "LOADING"
        glog("I", L_LOADING, f"Loading servable version {sid(self.name, version)}")
        retries = max(0, self.sim.args.max_num_load_retries)
        interval = max(0, self.sim.args.load_retry_interval_micros) / 1e6
        err: TFError | None = None
        tries = 0
        while True:
            if tries > 0:
                time.sleep(interval)
                glog("I", L_RETRY, f"Retrying of {desc} retry: {tries}")
            try:
                self._load_once(v)
                err = None
            except TFError as e:
                err = e
                glog("E", L_RETRY_FAILED, f"{desc} failed: {e}")
            tries += 1
            if err is None or tries >= retries + 1:
                break
        if tries == retries + 1 and err is not None:
            glog("I", L_RETRY_EXHAUSTED, f"Retrying of {desc} exhausted max_num_retries: {retries}")
        if err is None:
            with self.lock:
                v.state = "AVAILABLE"
            glog("I", L_LOADED, f"Successfully loaded servable version {sid(self.name, version)}")
            return True
        s = sid(self.name, version)
        glog("I", L_ENCOUNTERED, f"Encountered an error for servable version {s}: {err}")
        glog("E", L_CANNOT_LOAD, f"Servable {sid(self.name, version)} cannot be loaded: {err}")
        with self.lock:
            v.state = "END"
            v.error_code = err.code
            v.error_message = err.message
        self._failed_seen.add(version)
        return False

    def unload(self, version: int) -> None:
        with self.lock:
            v = self.versions.get(version)
            if v is None or v.state != "AVAILABLE":
                return
            v.state = "UNLOADING"
            if self.serving == version:
                self.serving = None
        s = sid(self.name, version)
        glog("I", L_QUIESCING, f"Quiescing servable version {s}")
        glog("I", L_DONE_QUIESCING, f"Done quiescing servable version {s}")
        glog("I", L_UNLOADING, f"Unloading servable version {s}")
        freed = (len(v.ballast) if v.ballast else 0) + 4096
        v.ballast = None
        glog("I", L_RELEASE, f"Calling MallocExtension_ReleaseToSystem() after servable unload with {freed}")
        with self.lock:
            v.state = "END"
        glog("I", L_DONE_UNLOADING, f"Done unloading servable version {s}")

    def aspired(self, on_disk: list[int]) -> int | None:
        if not on_disk:
            return None
        if self.pinned is not None and self.pinned in on_disk:
            return self.pinned
        return on_disk[-1]

    def reconcile(self) -> None:
        """One poll: aspire the latest version, load it, then unload the others."""
        on_disk = self.list_versions()
        if not on_disk:
            # The real source warns on every poll.
            glog(
                "W",
                L_NO_VERSIONS,
                f"No versions of servable {self.name} found under base path {self.base}. "
                "Did you forget to name your leaf directory as a number (eg. '/1/')?",
            )
        want = self.aspired(on_disk)
        # Versions whose directory vanished are no longer aspired.
        for ver in list(self.versions):
            if ver not in on_disk:
                self._failed_seen.discard(ver)
        if want is not None and want != self.serving and want not in self._failed_seen:
            cur = self.versions.get(want)
            if cur is None or cur.state in ("START", "END"):
                ok = self.load(want)
                if ok:
                    with self.lock:
                        old = [x for x, vv in self.versions.items() if x != want and vv.state == "AVAILABLE"]
                        self.serving = want
                    for x in old:
                        self.unload(x)
        # Versions whose directory vanished are unloaded; the served one stays until a
        # replacement is available (availability-preserving, like the real manager).
        with self.lock:
            gone = [x for x, vv in self.versions.items() if vv.state == "AVAILABLE" and x not in on_disk]
        for x in gone:
            if x == self.serving and want is not None:
                continue
            self.unload(x)

    def poll_forever(self) -> None:
        wait = max(0.05, float(self.sim.args.file_system_poll_wait_seconds))
        while True:
            time.sleep(wait)
            try:
                self.reconcile()
            except Exception as e:  # keep polling whatever happens
                sim_log(f"poll error: {type(e).__name__}: {e}", "E")


# --------------------------------------------------------------------------- faults

FAULT_NAMES = (
    "leak",
    "error_ramp",
    "latency_creep",
    "crash",
    "hang",
    "fail_load",
    "stale_on_restart",
    "noise",
)

NOISE_LINES = [
    (
        "I",
        "external/org_tensorflow/tensorflow/compiler/mlir/mlir_graph_optimization_pass.cc:388",
        "MLIR V1 optimization pass is not enabled",
    ),
    (
        "I",
        "external/org_tensorflow/tensorflow/core/common_runtime/process_util.cc:146",
        "Creating new thread pool with default inter op setting: 2. Tune using "
        "inter_op_parallelism_threads for best performance.",
    ),
    (
        "W",
        "external/org_tensorflow/tensorflow/core/grappler/costs/op_level_cost_estimator.cc:690",
        'Error in PredictCost() for the op: op: "Softmax" attr { key: "T" value { type: DT_FLOAT } } '
        'inputs { dtype: DT_FLOAT shape { unknown_rank: true } } device { type: "CPU" } outputs '
        "{ dtype: DT_FLOAT shape { unknown_rank: true } }",
    ),
    (
        "I",
        "external/org_tensorflow/tensorflow/core/grappler/optimizers/custom_graph_optimizer_registry.cc:114",
        "Plugin optimizer for device_type CPU is enabled.",
    ),
    (
        "W",
        "external/org_tensorflow/tensorflow/core/kernels/data/cache_dataset_ops.cc:856",
        "The calling iterator did not fully read the dataset being cached. In order to avoid "
        "unexpected truncation of the dataset, the partially cached contents of the dataset  "
        "will be discarded. This can happen if you have an input pipeline similar to "
        "`dataset.cache().take(k).repeat()`. You should use `dataset.take(k).cache().repeat()` instead.",
    ),
]


class Faults:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.lock = threading.Lock()
        self.active: dict[str, dict[str, Any]] = {}  # name -> {"params":..., "t0":..., "source":...}
        seed = sim.args.seed
        self.rng_err = random.Random(f"{seed}-error_ramp")
        self.rng_oom = random.Random(f"{seed}-oom")
        self.rng_noise = random.Random(f"{seed}-noise")
        self.leaked: list[bytes] = []
        self.leaked_bytes = 0
        self.hanging = threading.Event()
        self._last_warn = 0.0
        self._last_bfc = 0.0
        self._leak_limit: int | None = None
        self._leak_cap_logged = False

    # -- management
    @staticmethod
    def validate(spec: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(spec, dict):
            raise ValueError("faults must be a JSON object {fault_name: {params}}")
        out: dict[str, dict[str, Any]] = {}
        for name, params in spec.items():
            if name not in FAULT_NAMES:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise ValueError(f"params of fault {name!r} must be a JSON object")
            for k, val in params.items():
                if k == "versions":
                    if not isinstance(val, list) or not all(isinstance(x, int) for x in val):
                        raise ValueError("fail_load.versions must be a list of integers")
                elif k == "error":
                    if not isinstance(val, str):
                        raise ValueError("fail_load.error must be a string")
                elif not isinstance(val, int | float) or isinstance(val, bool):
                    raise ValueError(f"{name}.{k} must be a number")
            out[name] = dict(params)
        return out

    def add(self, spec: dict[str, dict[str, Any]], source: str, t0: float | None = None) -> None:
        now = time.monotonic() if t0 is None else t0
        for name, params in spec.items():
            with self.lock:
                replaced = name in self.active
                self.active[name] = {"params": params, "t0": now, "source": source}
            sim_log(
                f"[sim] fault {'replaced' if replaced else 'added'} ({source}): {name} "
                f"{json.dumps(params, sort_keys=True)}"
            )
            if name == "stale_on_restart" and source == "admin":
                self.sim.persist_pin(params.get("version"))
            if name == "hang" and float(params.get("after_s", 0)) <= 0:
                self.hanging.set()
                sim_log("[sim] hang active: REST requests will not be answered", "W")

    def remove(self, name: str | None) -> list[str]:
        with self.lock:
            names = list(self.active) if name is None else ([name] if name in self.active else [])
            for n in names:
                del self.active[n]
        for n in names:
            sim_log(f"[sim] fault removed: {n}")
            if n == "hang":
                self.hanging.clear()
            if n == "leak":
                self.leaked = []
                self.leaked_bytes = 0
                self._leak_limit = None
                self._leak_cap_logged = False
            if n == "stale_on_restart":
                self.sim.persist_pin(None)
        return names

    def listing(self) -> dict[str, Any]:
        now = time.monotonic()
        with self.lock:
            return {
                n: {
                    "params": f["params"],
                    "source": f["source"],
                    "active_for_s": round(now - f["t0"], 3),
                }
                for n, f in self.active.items()
            }

    def get(self, name: str) -> tuple[dict[str, Any], float] | None:
        with self.lock:
            f = self.active.get(name)
            if f is None:
                return None
            return f["params"], time.monotonic() - f["t0"]

    @staticmethod
    def ramp(params: dict[str, Any], elapsed: float, a: str, b: str, default_over: float) -> float:
        start = float(params.get(a, 0.0))
        end = float(params.get(b, start))
        over = float(params.get("over_s", default_over))
        frac = 1.0 if over <= 0 else min(1.0, max(0.0, elapsed / over))
        return start + (end - start) * frac

    # -- request-path hooks
    def error_share(self) -> float:
        g = self.get("error_ramp")
        if g is None:
            return 0.0
        return self.ramp(g[0], g[1], "start", "end", 60.0)

    def should_error(self) -> bool:
        share = self.error_share()
        if share <= 0:
            return False
        with self.lock:
            return self.rng_err.random() < share

    def added_latency_s(self) -> float:
        g = self.get("latency_creep")
        if g is None:
            return 0.0
        return max(0.0, self.ramp(g[0], g[1], "start_ms", "end_ms", 90.0)) / 1000.0

    def fail_load_error(self, version: int) -> TFError | None:
        g = self.get("fail_load")
        if g is None:
            return None
        p = g[0]
        hit = False
        if "versions" in p and version in p["versions"]:
            hit = True
        if "min_version" in p and version >= int(p["min_version"]):
            hit = True
        if not ("versions" in p or "min_version" in p):
            hit = True
        if not hit:
            return None
        kind = str(p.get("error", "not_found")).lower()
        path = os.path.join(self.sim.args.model_base_path, str(version))
        if kind == "data_loss":
            return TFError("DATA_LOSS", f"Can't parse {path}/saved_model.pb as binary proto")
        if kind == "unknown":
            return TFError("UNKNOWN", f"Failed to load SavedModel at {path}: Op type not registered 'SimOp'")
        if kind == "invalid_argument":
            return TFError("INVALID_ARGUMENT", f"Cannot assign a device for operation x: {path} has no CPU kernel")
        return TFError(
            "NOT_FOUND",
            "Could not find meta graph def matching supplied tags: { serve }. To inspect available "
            "tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`",
        )

    def memory_pressure(self) -> float:
        """0..1+: how close memory is to the (container or leak-cap) limit."""
        if self.get("leak") is None or self._leak_limit is None:
            return 0.0
        used = proc_status_bytes("VmRSS")
        return used / self._leak_limit if self._leak_limit else 0.0

    def oom_error(self, n_values: int) -> TFError | None:
        p = self.memory_pressure()
        if p < 0.9:
            return None
        share = min(1.0, (p - 0.9) / 0.05)
        with self.lock:
            hit = self.rng_oom.random() < share
        if not hit:
            return None
        rows = max(1, n_values)
        return TFError(
            "RESOURCE_EXHAUSTED",
            f"OOM when allocating tensor with shape[{rows},1024,1024] and type float on "
            "/job:localhost/replica:0/task:0/device:CPU:0 by allocator cpu\n\t "
            "[[{{node StatefulPartitionedCall}}]]\n"
            "Hint: If you want to see a list of allocated tensors when OOM happens, add "
            "report_tensor_allocations_upon_oom to RunOptions for current allocation info. This isn't "
            "available when running in Eager mode.\n",
        )

    # -- background ticker
    def run_forever(self) -> None:
        tick = 0.1
        noise_credit = 0.0
        while True:
            time.sleep(tick)
            try:
                self._tick(tick)
                g = self.get("noise")
                if g is not None:
                    noise_credit += float(g[0].get("lines_per_s", 5)) * tick
                    while noise_credit >= 1:
                        noise_credit -= 1
                        with self.lock:
                            lvl, where, msg = self.rng_noise.choice(NOISE_LINES)
                        glog(lvl, where, msg)
                else:
                    noise_credit = 0.0
            except Exception as e:
                sim_log(f"[sim] fault ticker error: {type(e).__name__}: {e}", "E")

    def _tick(self, tick: float) -> None:
        g = self.get("crash")
        if g is not None and g[1] >= float(g[0].get("after_s", 10)):
            glog("F", L_BFC_CHECK, "Check failed: c->in_use() && (c->bin_num == kInvalidBinNum) ")
            with _LOG_LOCK:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.abort()
        g = self.get("hang")
        if g is not None and not self.hanging.is_set() and g[1] >= float(g[0].get("after_s", 0)):
            self.hanging.set()
            sim_log("[sim] hang active: REST requests will not be answered", "W")
        g = self.get("leak")
        if g is not None:
            self._leak_step(g[0], tick)

    def _leak_step(self, params: dict[str, Any], tick: float) -> None:
        mb_per_s = float(params.get("mb_per_s", 20))
        chunk = int(mb_per_s * tick * 1024 * 1024)
        if chunk <= 0:
            return
        max_mb = params.get("max_mb")
        cg = cgroup_memory_limit()
        if self._leak_limit is None:
            if cg is not None:
                self._leak_limit = cg
            elif max_mb is not None:
                self._leak_limit = proc_status_bytes("VmRSS") + int(float(max_mb) * 1024 * 1024)
            else:
                # No cgroup limit and no cap: stay safe, stop at half of what is available now.
                avail = meminfo_bytes("MemAvailable") or (1 << 30)
                self._leak_limit = proc_status_bytes("VmRSS") + avail // 2
                max_mb = avail // 2 // (1024 * 1024)
                params["max_mb"] = max_mb
                sim_log(f"[sim] leak: no memory limit known, capping the leak at {max_mb} MB", "W")
        if max_mb is not None and self.leaked_bytes + chunk > float(max_mb) * 1024 * 1024:
            chunk = int(float(max_mb) * 1024 * 1024) - self.leaked_bytes
            if chunk <= 0:
                if not self._leak_cap_logged:
                    sim_log(f"[sim] leak reached max_mb={max_mb}", "W")
                    self._leak_cap_logged = True
                self._allocator_warnings(int(mb_per_s * tick * 1024 * 1024))
                return
        self.leaked.append(b"\x01" * chunk)
        self.leaked_bytes += chunk
        self._allocator_warnings(chunk)

    def _allocator_warnings(self, chunk: int) -> None:
        limit = self._leak_limit
        if not limit:
            return
        rss = proc_status_bytes("VmRSS")
        usage = max(rss, cgroup_memory_usage() or 0) if cgroup_memory_limit() else rss
        free = max(0, limit - usage)
        now = time.monotonic()
        alloc = max(chunk, 4 << 20)
        if (alloc > free * 0.1 or usage > 0.8 * limit) and now - self._last_warn >= 1.0:
            self._last_warn = now
            glog("W", L_CPU_ALLOC, f"Allocation of {alloc} exceeds 10% of free system memory.")
        if usage > 0.9 * limit and now - self._last_bfc >= 1.0:
            self._last_bfc = now
            glog(
                "W",
                L_BFC,
                f"Allocator (cpu) ran out of memory trying to allocate {human_bytes(alloc * 4)} "
                "with freed_by_count=0. The caller indicates that this is not a failure, but may mean "
                "that there could be performance gains if more memory were available.",
            )


# --------------------------------------------------------------------------- prediction


def _apply(x: Any, scale: float, offset: float, where: str) -> Any:
    if isinstance(x, bool) or x is None or isinstance(x, str | dict):
        t = {bool: "BOOL", str: "STRING", dict: "OBJECT", type(None): "NULL"}.get(type(x), "VALUE")
        raise TFError(
            "INVALID_ARGUMENT",
            f"{where}JSON Value: {json.dumps(x)} Type: {t.title()} is not of expected type: float",
        )
    if isinstance(x, int | float):
        y = scale * float(x) + offset
        return float(f"{y:.9g}")
    if isinstance(x, list):
        return [_apply(e, scale, offset, where) for e in x]
    raise TFError("INVALID_ARGUMENT", f"{where}Unexpected JSON value")


def _shape(x: Any) -> tuple[int, ...]:
    if isinstance(x, list):
        if not x:
            return (0,)
        inner = {_shape(e) for e in x}
        if len(inner) != 1:
            raise TFError("INVALID_ARGUMENT", "Expecting tensor size to be consistent across elements")
        return (len(x), *inner.pop())
    return ()


def _count(x: Any) -> int:
    if isinstance(x, list):
        return sum(_count(e) for e in x)
    return 1


def predict(desc: dict[str, Any], body: Any) -> tuple[dict[str, Any], int]:
    """Returns (response JSON, number of values)."""
    if not isinstance(body, dict):
        raise TFError("INVALID_ARGUMENT", "JSON Value: " + json.dumps(body)[:200] + " Is not object")
    scale, offset = desc["scale"], desc["offset"]
    in_name = desc["input_name"]
    has_inst, has_inp = "instances" in body, "inputs" in body
    if has_inst and has_inp:
        raise TFError(
            "INVALID_ARGUMENT",
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        )
    if has_inst:
        inst = body["instances"]
        if not isinstance(inst, list):
            raise TFError("INVALID_ARGUMENT", "Excepting 'instances' to be an list/array")
        if not inst:
            raise TFError("INVALID_ARGUMENT", "No values in 'instances' array")
        preds = []
        shapes = set()
        for i, elem in enumerate(inst):
            where = f"Failed to process element: {i} of 'instances' list. Error: INVALID_ARGUMENT: "
            if isinstance(elem, dict):
                if set(elem) != {in_name}:
                    raise TFError(
                        "INVALID_ARGUMENT",
                        f"Failed to process element: {i} of 'instances' list. JSON object: "
                        f"{json.dumps(elem)} must only have keys: {in_name}",
                    )
                elem = elem[in_name]
            preds.append(_apply(elem, scale, offset, where))
            try:
                shapes.add(_shape(elem))
            except TFError as e:
                raise TFError("INVALID_ARGUMENT", where + e.message) from None
            if len(shapes) > 1:
                raise TFError(
                    "INVALID_ARGUMENT",
                    f"Failed to process element: {i} of 'instances' list. Error: INVALID_ARGUMENT: "
                    "Expecting tensors in list to have the same shape",
                )
        return {"predictions": preds}, _count(inst)
    if has_inp:
        inp = body["inputs"]
        if isinstance(inp, dict):
            if in_name not in inp:
                raise TFError("INVALID_ARGUMENT", f"Missing named input: {in_name} in 'inputs' object.")
            inp = inp[in_name]
        out = _apply(inp, scale, offset, "")
        _shape(inp)
        return {"outputs": out}, _count(inp)
    raise TFError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key")


# --------------------------------------------------------------------------- HTTP

RE_PREDICT = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)")
RE_METADATA = re.compile(r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+))?/metadata")
RE_STATUS = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?")


class BodyTooLarge(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TensorFlowServingSim/1.0"
    sim: Simulator

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Used by the stdlib for malformed request lines/headers: answer JSON, never HTML.
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.1"  # always send a status line and headers
        with contextlib.suppress(Exception):
            self._reply(code, {"error": message or "Bad request"}, close=True)

    def _reply(self, code: int, obj: Any, close: bool = False, ctype: str = "application/json") -> None:
        if isinstance(obj, str | bytes):
            data = obj.encode() if isinstance(obj, str) else obj
        else:
            data = (json.dumps(obj, indent=4) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _read_body(self) -> bytes:
        limit = int(self.sim.args.max_body_bytes)
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            buf = bytearray()
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    raise TFError("INVALID_ARGUMENT", "Malformed chunked request body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                if len(buf) + size > limit:
                    raise BodyTooLarge(len(buf) + size)
                buf += self.rfile.read(size)
                self.rfile.readline(1024)
            return bytes(buf)
        cl = self.headers.get("Content-Length")
        if not cl:
            return b""
        try:
            n = int(cl)
        except ValueError:
            raise TFError("INVALID_ARGUMENT", f"Invalid Content-Length: {cl}") from None
        if n < 0:
            raise TFError("INVALID_ARGUMENT", f"Invalid Content-Length: {cl}")
        if n > limit:
            raise BodyTooLarge(n)
        return self.rfile.read(n)

    def _dispatch(self) -> None:
        try:
            self._handle()
        except BodyTooLarge as e:
            limit = int(self.sim.args.max_body_bytes)
            self._reply(
                413,
                {"error": f"Request body of {e.args[0]} bytes exceeds the limit of {limit} bytes"},
                close=True,
            )
        except TFError as e:
            self._reply(e.http_status, {"error": e.message})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # never a traceback to the client
            sim_log(f"[sim] internal error handling {self.command} {self.path}: {type(e).__name__}: {e}", "E")
            with contextlib.suppress(Exception):
                self._reply(500, {"error": f"Internal: {type(e).__name__}"}, close=True)

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_DELETE = _dispatch
    do_PATCH = _dispatch
    do_HEAD = _dispatch
    do_OPTIONS = _dispatch

    def _handle(self) -> None:
        raise NotImplementedError


class RestHandler(_Handler):
    def _handle(self) -> None:
        sim = self.sim
        if sim.faults.hanging.is_set():
            while True:  # the process is alive but never answers
                time.sleep(3600)
        path = self.path.split("?", 1)[0]
        method = self.command
        metrics_path = sim.metrics_path
        if metrics_path is not None and path == metrics_path:
            if method != "GET":
                raise TFError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
            self._reply(200, sim.render_metrics(), ctype="text/plain; version=0.0.4")
            return
        if not re.fullmatch(r"(?i)/v1/.*", path):
            self._read_body_quietly()
            raise TFError("NOT_FOUND", f"Not found: {method} {path}")
        body = self._read_body()
        m = RE_PREDICT.fullmatch(path)
        if method == "POST" and m:
            self._predict(m.group(1), m.group(2), m.group(3).lower(), body)
            return
        if method == "GET":
            m = RE_METADATA.fullmatch(path)
            if m:
                self._reply(200, sim.metadata(m.group(1), m.group(2)))
                return
            m = RE_STATUS.fullmatch(path)
            if m:
                name, ver = m.group(1), m.group(2)
                if not name:
                    raise TFError("INVALID_ARGUMENT", "Missing model name in request.")
                if name != sim.manager.name:
                    raise TFError("NOT_FOUND", f"Could not find any versions of model {name}")
                self._reply(200, sim.manager.status(int(ver) if ver else None))
                return
        raise TFError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")

    def _read_body_quietly(self) -> None:
        with contextlib.suppress(TFError):
            self._read_body()

    def _predict(self, name: str, ver: str | None, method: str, body: bytes) -> None:
        sim = self.sim
        t0 = time.monotonic()
        version = int(ver) if ver else None
        status = "OK"
        try:
            if method != "predict":
                sim.manager.resolve(name, version)
                kind = "classification" if method == "classify" else "regression"
                raise TFError(
                    "INVALID_ARGUMENT",
                    f"Expected {kind} signature method_name to be tensorflow/serving/{method}. "
                    "Was: tensorflow/serving/predict",
                )
            doc = parse_json_like_rapidjson(body)
            v = sim.manager.resolve(name, version)
            if isinstance(doc, dict) and doc.get("signature_name") not in (None, "", "serving_default"):
                raise TFError(
                    "INVALID_ARGUMENT",
                    f'Serving signature name: "{doc["signature_name"]}" not found in signature def',
                )
            t_run = time.monotonic()
            out, n_values = predict(v.desc, doc)
            extra = sim.faults.added_latency_s() + v.desc.get("predict_ms", 0.0) / 1000.0
            if extra > 0:
                time.sleep(extra)
            oom = sim.faults.oom_error(n_values)
            if oom is not None:
                glog(
                    "W",
                    L_OP_KERNEL,
                    f"OP_REQUIRES failed at mkl_matmul_op.cc:205 : {oom.code}: " + oom.message.split("\n")[0],
                )
                raise oom
            if sim.faults.should_error():
                err = TFError(
                    "INTERNAL",
                    "{{function_node __inference_signature_wrapper_1523}} Executor failed to create "
                    "kernel. Internal: Failed to allocate scratch buffer for device 0\n\t "
                    "[[{{node StatefulPartitionedCall/half_plus_two/Add}}]]",
                )
                glog("E", L_EXECUTOR, f"Executor failed to create kernel. {err}")
                raise err
            run_us = (time.monotonic() - t_run) * 1e6
            sim.metrics.observe(M_RUN_LAT, {"model_name": name, "API": "Predict", "runtime": "TF1"}, run_us)
            sim.metrics.inc(M_GRAPH_RUNS)
            sim.metrics.inc(M_GRAPH_RUN_TIME, by=int(run_us))
            self._reply(200, out)
        except TFError as e:
            status = e.code
            raise
        finally:
            lat_us = (time.monotonic() - t0) * 1e6
            sim.metrics.inc(M_REQ_COUNT, {"model_name": name, "status": status})
            sim.metrics.observe(
                M_REQ_LAT,
                {"model_name": name, "API": "predict", "entrypoint": "REST", "status": status},
                lat_us,
            )


class AdminHandler(_Handler):
    def _handle(self) -> None:
        sim = self.sim
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        method = self.command
        body = self._read_body()
        if path == "/faults":
            if method == "GET":
                self._reply(200, {"faults": sim.faults.listing()})
                return
            if method == "POST":
                try:
                    spec = Faults.validate(json.loads(body.decode("utf-8") or "null"))
                except (ValueError, UnicodeDecodeError) as e:
                    self._reply(400, {"error": str(e)})
                    return
                sim.faults.add(spec, "admin")
                self._reply(200, {"faults": sim.faults.listing()})
                return
            if method == "DELETE":
                removed = sim.faults.remove(None)
                self._reply(200, {"removed": removed, "faults": sim.faults.listing()})
                return
        m = re.fullmatch(r"/faults/([a-z_]+)", path)
        if m and method == "DELETE":
            removed = sim.faults.remove(m.group(1))
            if not removed:
                self._reply(404, {"error": f"fault {m.group(1)} is not active"})
                return
            self._reply(200, {"removed": removed, "faults": sim.faults.listing()})
            return
        if path == "/status" and method == "GET":
            self._reply(200, sim.admin_status())
            return
        self._reply(404, {"error": f"Not found: {method} {path}"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # no tracebacks on stderr for broken connections


# --------------------------------------------------------------------------- simulator


def parse_monitoring_config(path: str) -> str | None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"prometheus_config\s*:?\s*\{(.*?)\}", text, re.S)
    if not m:
        return None
    block = m.group(1)
    if not re.search(r"\benable\s*:\s*true\b", block):
        return None
    pm = re.search(r'\bpath\s*:\s*"([^"]*)"', block)
    return pm.group(1) if pm and pm.group(1) else "/monitoring/prometheus/metrics"


class Simulator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t_start = time.monotonic()
        self.metrics = Metrics()
        for c in (M_REQ_COUNT, M_LOAD_ATTEMPT, M_LOAD_LAT, M_GRAPH_RUNS, M_GRAPH_RUN_TIME):
            self.metrics.declare_counter(c)
        self.metrics.declare_hist(M_REQ_LAT, LATENCY_BOUNDS)
        self.metrics.declare_hist(M_RUN_LAT, LATENCY_BOUNDS)
        self.faults = Faults(self)
        self.manager = ModelManager(self)
        self.metrics_path: str | None = None

    # -- state dir (stale_on_restart)
    def _state_file(self) -> str | None:
        d = self.args.state_dir
        return os.path.join(d, "sim_state.json") if d else None

    def persist_pin(self, version: Any) -> None:
        p = self._state_file()
        if p is None:
            if version is not None:
                sim_log("[sim] stale_on_restart needs --state_dir to survive a restart", "W")
            return
        try:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if version is None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p)
                return
            tmp = p + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"pinned_version": int(version)}, f)
            os.replace(tmp, p)
        except (OSError, ValueError, TypeError) as e:
            sim_log(f"[sim] could not write state file {p}: {e}", "E")

    def load_pin(self) -> int | None:
        p = self._state_file()
        if p is None:
            return None
        try:
            with open(p, encoding="utf-8") as f:
                v = json.load(f).get("pinned_version")
            return int(v) if v is not None else None
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    # -- REST helpers
    def metadata(self, name: str, ver: str | None) -> dict[str, Any]:
        v = self.manager.resolve(name, int(ver) if ver else None)
        i, o = v.desc["input_name"], v.desc["output_name"]
        sig = {
            "inputs": {i: _sig_tensor(i)},
            "outputs": {o: _sig_tensor(o)},
            "method_name": "tensorflow/serving/predict",
            "defaults": {},
        }
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(v.version)},
            "metadata": {"signature_def": {"signature_def": {"serving_default": sig}}},
        }

    def render_metrics(self) -> str:
        return self.metrics.render(
            {
                "process_resident_memory_bytes": proc_status_bytes("VmRSS"),
                "process_virtual_memory_bytes": proc_status_bytes("VmSize"),
            }
        )

    def admin_status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.t_start, 3),
            "serving_version": self.manager.serving,
            "pinned_version": self.manager.pinned,
            "rss_bytes": proc_status_bytes("VmRSS"),
            "leaked_bytes": self.faults.leaked_bytes,
            "memory_limit_bytes": cgroup_memory_limit(),
            "hanging": self.faults.hanging.is_set(),
            "error_share": round(self.faults.error_share(), 4),
            "added_latency_ms": round(self.faults.added_latency_s() * 1000, 3),
        }

    # -- main
    def _serve(self, server: ThreadingHTTPServer, name: str) -> None:
        t = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        t.start()

    def run(self) -> int:
        a = self.args
        # Faults from the environment count from process start.
        env = os.environ.get("SIM_FAULTS", "").strip()
        env_spec: dict[str, dict[str, Any]] = {}
        if env:
            try:
                env_spec = Faults.validate(json.loads(env))
            except ValueError as e:
                sim_log(f"[sim] ignoring invalid SIM_FAULTS: {e}", "E")
        if a.monitoring_config_file:
            try:
                self.metrics_path = parse_monitoring_config(a.monitoring_config_file)
            except OSError as e:
                print(f"Failed to start server. Error: NOT_FOUND: {a.monitoring_config_file}; {e.strerror}")
                return 255
        if not a.model_base_path:
            print(
                "Failed to start server. Error: INVALID_ARGUMENT: Both server_model_config "
                "and model_config_file are empty!"
            )
            return 255
        if env_spec:
            self.faults.add(env_spec, "env", t0=self.t_start)
        threading.Thread(target=self.faults.run_forever, name="faults", daemon=True).start()
        if a.admin_port:
            admin = _Server((a.bind_address, a.admin_port), type("Admin", (AdminHandler,), {"sim": self}))
            self._serve(admin, "admin")
            sim_log(f"[sim] admin API at {a.bind_address}:{admin.server_address[1]}")

        pin = None
        if "stale_on_restart" in env_spec:
            pin = env_spec["stale_on_restart"].get("version")
        if pin is None:
            pin = self.load_pin()
            if pin is not None:
                # Show the persisted pin as an active fault so DELETE can clear it.
                with self.faults.lock:
                    self.faults.active["stale_on_restart"] = {
                        "params": {"version": pin},
                        "t0": self.t_start,
                        "source": "state_dir",
                    }
        if pin is not None:
            self.manager.pinned = int(pin)
            sim_log(f"[sim] stale_on_restart: serving pinned version {int(pin)} instead of the latest", "W")

        glog(
            "I",
            L_BUILD_CONFIG,
            f"Building single TensorFlow model file config:  model_name: {a.model_name} "
            f"model_base_path: {a.model_base_path}",
        )
        glog("I", L_ADDING, "Adding/updating models.")
        glog("I", L_READDING, f" (Re-)adding model: {a.model_name}")
        # Like the real server: wait for the initial version before opening the ports.
        while True:
            self.manager.reconcile()
            if self.manager.serving is not None:
                break
            on_disk = self.manager.list_versions()
            want = self.manager.aspired(on_disk)
            if want is not None and want in self.manager._failed_seen:
                v = self.manager.versions[want]
                print(
                    "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
                    f"{{{{{{name: {a.model_name} version: {want}}} due to error: {v.error_code}: "
                    f"{v.error_message}}}, }}",
                    flush=True,
                )
                return 255
            time.sleep(max(0.05, float(a.file_system_poll_wait_seconds)))
        glog("I", L_FINISHED_ADDING, "Finished adding/updating models")
        glog("I", L_PROFILER, "Profiler service is enabled")
        glog("I", L_GRPC, f"Running gRPC ModelServer at 0.0.0.0:{a.port} ...")
        _raw("[warn] getaddrinfo: address family for nodename not supported")
        try:
            rest = _Server((a.bind_address, a.rest_api_port), type("Rest", (RestHandler,), {"sim": self}))
        except OSError as e:
            print(
                f"Failed to start server. Error: UNAVAILABLE: Failed to start HTTP Server at "
                f"{a.bind_address}:{a.rest_api_port}: {e.strerror}",
                flush=True,
            )
            return 255
        glog("I", L_REST, f"Exporting HTTP/REST API at:localhost:{rest.server_address[1]} ...")
        _raw("[evhttp_server.cc : 245] NET_LOG: Entering the event loop ...")
        threading.Thread(target=self.manager.poll_forever, name="fs-poll", daemon=True).start()
        rest.serve_forever(poll_interval=0.2)
        return 0


def build_parser() -> argparse.ArgumentParser:
    env_name = os.environ.get("MODEL_NAME", "")
    env_base = os.environ.get("MODEL_BASE_PATH", "")
    default_base = os.path.join(env_base, env_name) if env_base and env_name else ""
    p = argparse.ArgumentParser(prog="tfserving_sim.py", description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=8500, help="gRPC port (logged only, not bound)")
    p.add_argument("--rest_api_port", type=int, default=8501)
    p.add_argument("--bind_address", default="127.0.0.1", help="address for REST and admin (sim only)")
    p.add_argument("--model_name", default=env_name or "default")
    p.add_argument("--model_base_path", default=default_base)
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    p.add_argument("--monitoring_config_file", default="")
    p.add_argument("--max_num_load_retries", type=int, default=5)
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000)
    p.add_argument("--admin_port", type=int, default=0, help="admin API port, 0 = off (sim only)")
    p.add_argument("--state_dir", default="", help="writable dir that survives restarts (sim only)")
    p.add_argument("--seed", type=int, default=0, help="seed for deterministic faults (sim only)")
    p.add_argument("--max_body_bytes", type=int, default=16 << 20, help="request body limit (sim only)")
    return p


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        sim_log(f"[sim] ignoring unsupported flags: {' '.join(unknown)}", "W")

    def _term(signum: int, _frame: Any) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    return Simulator(args).run()


if __name__ == "__main__":
    sys.exit(main())
