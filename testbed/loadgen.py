"""Open-loop load generator for TF-Serving-style ``:predict`` (and Open Inference Protocol ``/infer``) endpoints.

Requests are scheduled at fixed times ``t0 + k / rate`` no matter how long earlier ones
take: a closed-loop client would slow down exactly when a replica degrades and hide the
failure the watcher is supposed to predict (coordinated omission). Each request gets its
own connection from a thread pool sized for ``rate * timeout`` in-flight requests, and any
lag between the scheduled and actual start is recorded so saturation of the generator is
visible rather than silently lowering the offered load.

A 200 whose predictions do not match an acceptable model output counts as FAILED: a replica
serving a wrong or half-loaded model version is a failure even though HTTP says OK.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "Expected",
    "LoadGenerator",
    "LoadResult",
    "RequestRecord",
    "outputs_match",
    "percentile",
]

Expected = Callable[[list[Any]], bool] | Mapping[str, list[Any]] | None
"""How to judge a 200: a predicate over ``predictions``, or {version label: expected
predictions} (any match is OK and the label is recorded), or None (any predictions list)."""

MAX_REQUESTS = 200_000
MAX_WORKERS = 1024


def v2_request(instances: list[Any]) -> dict[str, Any]:
    """The Open Inference Protocol body for rows of numbers: one FP64 tensor ``[rows, columns]``."""
    rows = [row if isinstance(row, list) else [row] for row in instances]
    data = [float(x) for row in rows for x in row]
    return {
        "inputs": [{"name": "x", "shape": [len(rows), len(rows[0]) if rows else 0], "datatype": "FP64", "data": data}]
    }


def v2_predictions(payload: Any) -> list[Any] | None:
    """The first output's data of an Open Inference Protocol answer, flat (None: no outputs)."""
    outputs = payload.get("outputs") if isinstance(payload, dict) else None
    if not isinstance(outputs, list) or not outputs or not isinstance(outputs[0], dict):
        return None
    data = outputs[0].get("data")
    return list(data) if isinstance(data, list) else None


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method); NaN for no values."""
    if not values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def outputs_match(got: Any, want: Any, rel_tol: float = 1e-5, abs_tol: float = 1e-6) -> bool:
    """Structural equality with float tolerance (JSON round trips perturb the last digits)."""
    if isinstance(want, bool) or isinstance(got, bool):
        return isinstance(want, bool) and isinstance(got, bool) and got == want
    if isinstance(want, int | float) and isinstance(got, int | float):
        return math.isclose(float(got), float(want), rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(
            outputs_match(g, w, rel_tol, abs_tol) for g, w in zip(got, want, strict=True)
        )
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(outputs_match(got[k], want[k], rel_tol, abs_tol) for k in want)
    return bool(got == want)


@dataclass
class RequestRecord:
    """One request. Times are seconds relative to the run's start (``LoadResult.t0_wall``)."""

    index: int
    scheduled_s: float
    started_s: float
    latency_ms: float
    status: str  # "200", "500", ..., "timeout", "connection_error", "bad_response"
    http_status: int | None = None
    upstream: str | None = None
    matched: bool | None = None
    version: str | None = None
    ok: bool = False
    error: str | None = None

    @property
    def final_upstream(self) -> str | None:
        """The upstream that produced the response.

        Nginx lists every tried server (``"a, b"``; ``" : "`` separates internal redirects),
        so the last entry is the one that answered.
        """
        if not self.upstream:
            return None
        return self.upstream.replace(" : ", ", ").split(",")[-1].strip() or None


@dataclass
class LoadResult:
    """Summary plus raw records (for timelines against Prometheus data)."""

    url: str
    rate_per_s: float
    duration_s: float
    timeout_s: float
    t0_wall: float
    elapsed_s: float
    stopped_early: bool
    records: list[RequestRecord] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.records)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if not r.ok)

    @property
    def failed_ratio(self) -> float:
        return self.failed / self.requests if self.records else 0.0

    @property
    def latencies_ms(self) -> list[float]:
        """Latency of every request, timeouts included at the time they were abandoned."""
        return [r.latency_ms for r in self.records]

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def status_counts(self) -> dict[str, int]:
        return dict(Counter(r.status for r in self.records))

    @property
    def upstream_counts(self) -> dict[str, int]:
        """Requests per upstream that served them (last entry of a retry list)."""
        return dict(Counter(r.final_upstream for r in self.records if r.final_upstream))

    @property
    def version_counts(self) -> dict[str, int]:
        return dict(Counter(r.version for r in self.records if r.version))

    @property
    def max_start_lag_ms(self) -> float:
        """Worst delay between scheduled and actual send: >0 means the generator saturated."""
        return max(((r.started_s - r.scheduled_s) * 1000.0 for r in self.records), default=0.0)

    @property
    def achieved_rate_per_s(self) -> float:
        if len(self.records) < 2:
            return 0.0
        starts = sorted(r.started_s for r in self.records)
        span = starts[-1] - starts[0]
        return (len(starts) - 1) / span if span > 0 else 0.0

    def to_dict(self, include_records: bool = True) -> dict[str, Any]:
        def _num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 3)

        out: dict[str, Any] = {
            "url": self.url,
            "rate_per_s": self.rate_per_s,
            "duration_s": self.duration_s,
            "timeout_s": self.timeout_s,
            "t0_wall": self.t0_wall,
            "elapsed_s": round(self.elapsed_s, 3),
            "stopped_early": self.stopped_early,
            "requests": self.requests,
            "failed": self.failed,
            "failed_ratio": round(self.failed_ratio, 6),
            "p50_ms": _num(self.p50_ms),
            "p99_ms": _num(self.p99_ms),
            "status_counts": self.status_counts,
            "upstream_counts": self.upstream_counts,
            "version_counts": self.version_counts,
            "achieved_rate_per_s": round(self.achieved_rate_per_s, 3),
            "max_start_lag_ms": round(self.max_start_lag_ms, 3),
        }
        if include_records:
            out["records"] = [asdict(r) for r in self.records]
        return out


class LoadGenerator:
    """Fire ``rate_per_s * duration_s`` predict requests at fixed times; see module doc.

    Use :meth:`run` (blocking) or :meth:`start` + :meth:`result`; :meth:`stop` ends early.
    The run is bounded by request count and by ``duration_s + timeout_s`` plus a grace
    period, so it always ends by itself.
    """

    def __init__(
        self,
        url_base: str,
        model: str,
        rate_per_s: float,
        duration_s: float,
        timeout_s: float,
        instances: list[Any],
        expected: Expected = None,
        version: int | str | None = None,
        max_workers: int | None = None,
        upstream_header: str = "X-Upstream",
        path: str | None = None,
        protocol: str = "tfserving",
    ) -> None:
        """``protocol``: ``tfserving`` (and KServe V1: ``:predict`` with ``instances``) or ``v2``
        (Open Inference Protocol: ``/infer`` with one FP64 input tensor, the answer's first output)."""
        if rate_per_s <= 0 or duration_s <= 0 or timeout_s <= 0:
            raise ValueError("rate_per_s, duration_s and timeout_s must be > 0")
        parts = urlsplit(url_base)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"url_base must be http://host:port, got {url_base!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.model = model
        self.rate_per_s = rate_per_s
        self.duration_s = duration_s
        self.timeout_s = timeout_s
        self.instances = instances
        self.expected = expected
        self.upstream_header = upstream_header
        base_path = parts.path.rstrip("/")
        if protocol not in ("tfserving", "kserve-v1", "v2"):
            raise ValueError(f"protocol must be tfserving, kserve-v1 or v2, got {protocol!r}")
        self.protocol = protocol
        versioned = f"/versions/{version}" if version is not None else ""
        if path is None and protocol == "v2":
            path = f"/v2/models/{model}{versioned}/infer"
        elif path is None:
            path = f"/v1/models/{model}{versioned}:predict"
        self.path = base_path + path
        self.url = f"http://{self.host}:{self.port}{self.path}"
        self.n_requests = min(MAX_REQUESTS, max(1, math.ceil(rate_per_s * duration_s - 1e-9)))
        self.max_workers = max_workers or min(MAX_WORKERS, math.ceil(rate_per_s * (timeout_s + 1.0)) + 8)
        self._body = json.dumps(v2_request(instances) if protocol == "v2" else {"instances": instances}).encode()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.completed: list[RequestRecord] = []  # finished requests, in completion order, while running
        self._result: LoadResult | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None

    # -- public API -----------------------------------------------------------------------
    def run(self) -> LoadResult:
        """Run the whole schedule in the calling thread and return the result."""
        return self._run()

    def start(self) -> LoadGenerator:
        """Run in a background thread (e.g. while a fault is injected); see :meth:`result`."""
        if self._thread is not None:
            raise RuntimeError("already started")

        def target() -> None:
            try:
                self._result = self._run()
            except BaseException as exc:  # surfaced by result()
                self._error = exc
            finally:
                self._done.set()

        self._thread = threading.Thread(target=target, name="loadgen", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop scheduling new requests; in-flight ones finish (bounded by ``timeout_s``)."""
        self._stop.set()

    def result(self, timeout_s: float | None = None) -> LoadResult:
        """Wait for a :meth:`start`-ed run; default wait covers the whole bounded run."""
        wait = timeout_s if timeout_s is not None else self.duration_s + 2 * self.timeout_s + 10.0
        if not self._done.wait(wait):
            raise TimeoutError(f"load generator still running after {wait:.1f}s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    # -- internals ------------------------------------------------------------------------
    def _run(self) -> LoadResult:
        self._stop.clear()
        t0_wall = time.time()
        t0 = time.monotonic()
        futures: list[Future[RequestRecord]] = []
        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="loadgen") as pool:
            for k in range(self.n_requests):
                scheduled = k / self.rate_per_s
                delay = t0 + scheduled - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                if self._stop.is_set():
                    break
                futures.append(pool.submit(self._one, k, scheduled, t0))
            stopped_early = self._stop.is_set()
            records = [f.result() for f in futures]
        records.sort(key=lambda r: r.index)
        return LoadResult(
            url=self.url,
            rate_per_s=self.rate_per_s,
            duration_s=self.duration_s,
            timeout_s=self.timeout_s,
            t0_wall=t0_wall,
            elapsed_s=time.monotonic() - t0,
            stopped_early=stopped_early,
            records=records,
        )

    def _judge(self, body: bytes) -> tuple[bool, str | None, str | None]:
        """(matched, version label, error) for a 200 body."""
        try:
            payload = json.loads(body)
        except ValueError:
            return False, None, "response is not JSON"
        preds = v2_predictions(payload) if self.protocol == "v2" else None
        if self.protocol != "v2":
            preds = payload.get("predictions") if isinstance(payload, dict) else None
        if not isinstance(preds, list):
            return False, None, "response has no 'predictions' list" if self.protocol != "v2" else "no outputs"
        if self.expected is None:
            return True, None, None
        if callable(self.expected):
            ok = bool(self.expected(preds))
            return ok, None, None if ok else "predictions rejected by predicate"
        for label, want in self.expected.items():
            if outputs_match(preds, want):
                return True, label, None
        return False, None, "predictions match no expected version"

    def _one(self, index: int, scheduled: float, t0: float) -> RequestRecord:
        started = time.monotonic()
        rec = RequestRecord(index=index, scheduled_s=scheduled, started_s=started - t0, latency_ms=0.0, status="")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request(
                "POST",
                self.path,
                body=self._body,
                headers={"Content-Type": "application/json", "Connection": "close"},
            )
            resp = conn.getresponse()
            body = resp.read()
            elapsed = time.monotonic() - started
            rec.http_status = resp.status
            rec.upstream = resp.getheader(self.upstream_header)
            if elapsed > self.timeout_s:
                # Socket timeouts are per read; a slow trickle can exceed the total budget.
                rec.status, rec.error = "timeout", f"completed after {elapsed:.3f}s > timeout"
            elif resp.status == 200:
                rec.status = "200"
                rec.matched, rec.version, rec.error = self._judge(body)
                rec.ok = rec.matched
            else:
                rec.status = str(resp.status)
                rec.error = body[:200].decode(errors="replace")
        except TimeoutError as exc:
            rec.status, rec.error = "timeout", str(exc) or "timed out"
        except (ConnectionError, http.client.RemoteDisconnected) as exc:
            rec.status, rec.error = "connection_error", f"{type(exc).__name__}: {exc}"
        except (http.client.HTTPException, OSError) as exc:
            rec.status, rec.error = "connection_error", f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        rec.latency_ms = (time.monotonic() - started) * 1000.0
        self.completed.append(rec)  # list.append is atomic: a live view may read it while running
        return rec
