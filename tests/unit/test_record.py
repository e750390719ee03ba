"""`watcher record`: what a recording holds (read back by the replay reader), and its bounds.

Docker is a fake with the docker-py surface record uses (list, api.logs, api.events); Prometheus is
a real HTTP server on loopback answering ``/api/v1/query_range`` on the grid it was asked for.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from watcher.inventory import LabelNames
from watcher.model import Lifecycle, LifecycleKind, LogRecord, Sample
from watcher.record import (
    RecordLimitError,
    RecordLimits,
    RecordSources,
    parse_when,
    record,
)
from watcher.replay import read_jsonl
from watcher.rulepack.compile import compile_packs
from watcher.rulepack.loader import parse_text

T0 = 1_800_000_000.0
SELECTOR = ("watcher.enable=true",)
PACK = """pack: rec
series:
  - {name: error_ratio, promql: 'err_ratio'}
rules:
  - id: slow-check
    promql: 'slow_ratio'
    threshold: {above: 0.5}
    every: 5s
    predicts: unhealthy
"""


def docker_ts(ts: float) -> str:
    whole = int(ts)
    frac = round((ts - whole) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{frac:09d}Z"


class FakeContainer:
    def __init__(self, cid: str, name: str, labels: dict[str, str]) -> None:
        self.id, self.name, self.labels = cid, name, labels
        self.attrs: dict[str, Any] = {"State": {"Running": True}, "Config": {"Tty": False}}


class FakeApi:
    def __init__(self, lines: dict[str, list[tuple[float, str]]], events: list[dict[str, Any]]) -> None:
        self.lines, self.events_list = lines, events
        self.log_calls: list[dict[str, Any]] = []
        self.event_calls: list[dict[str, Any]] = []

    def logs(self, cid: str, **kw: Any) -> Iterator[bytes]:
        self.log_calls.append(kw)
        for ts, text in self.lines[cid]:
            yield f"{docker_ts(ts)} {text}\n".encode()

    def events(self, **kw: Any) -> Iterator[dict[str, Any]]:
        self.event_calls.append(kw)
        yield from self.events_list


class FakeClient:
    def __init__(self, containers: list[FakeContainer], api: FakeApi) -> None:
        self._containers, self.api = containers, api
        self.containers = self

    def list(self, filters: Mapping[str, Any] | None = None, **_: Any) -> list[FakeContainer]:
        wanted = [t.partition("=") for t in (filters or {}).get("label", [])]
        return [c for c in self._containers if all(c.labels.get(k) == v for k, _, v in wanted)]


def event(action: str, name: str, ts: float, **attrs: str) -> dict[str, Any]:
    return {
        "Type": "container",
        "Action": action,
        "id": "c1",
        "timeNano": int(ts * 1e9),
        "Actor": {"ID": "c1", "Attributes": {"name": name, "watcher.service": "m", **attrs}},
    }


class PromHandler(BaseHTTPRequestHandler):
    calls: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        PromHandler.calls.append(q)
        start, end, step = float(q["start"]), float(q["end"]), float(q["step"])
        grid = []
        t = start
        while t <= end + 1e-9:
            grid.append(round(t, 3))
            t += step
        if q["query"] == "err_ratio":
            result = [
                # a gap at the third step: the live source would have marked the series stale there
                {"metric": {"replica": "tfs-1"}, "values": [[t, str(0.1 * i)] for i, t in enumerate(grid) if i != 2]},
                {"metric": {"replica": "not-watched"}, "values": [[grid[0], "1"]]},
            ]
        else:
            result = [{"metric": {"replica": "tfs-1"}, "values": [[t, "0.9"] for t in grid]}]
        body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    PromHandler.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), PromHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{server.server_address[0]}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fleet() -> dict[str, Any]:
    watched = {"watcher.enable": "true", "watcher.service": "m"}
    containers = [FakeContainer("c1", "tfs-1", watched), FakeContainer("c9", "other", {"watcher.enable": "false"})]
    lines = {
        "c1": [
            (T0 - 5, "before the range"),
            (T0 + 1, "booted"),
            (T0 + 2, "token s3cr3t-token-value leaked"),
            (T0 + 3, "OOM when allocating tensor"),
        ],
        "c9": [(T0 + 1, "never read")],
    }
    events = [
        event("start", "tfs-1", T0 + 0.5),
        event("oom", "tfs-1", T0 + 20),
        event("oom", "tfs-1", T0 + 20.017),  # Docker reported two oom events for one kill (seen on this engine)
        event("die", "tfs-1", T0 + 20.1, exitCode="137"),  # the OOM kill itself: one failure, not two
        event("exec_start", "tfs-1", T0 + 21),  # not lifecycle
    ]
    return {"local": FakeClient(containers, FakeApi(lines, events))}


def sources(url: str | None, secrets: tuple[str, ...] = ()) -> RecordSources:
    packs, errors = parse_text(PACK, "rec.yaml")
    assert not errors
    return RecordSources(
        ruleset=compile_packs(packs),
        labels=LabelNames(SELECTOR),
        prometheus_url=url,
        prometheus_interval_s=1.0,
        secrets=secrets,
    )


def test_recording_reads_back_as_the_live_sources_signals(prometheus: str, tmp_path: Path) -> None:
    out = tmp_path / "fleet.jsonl.gz"
    url = prometheus.replace("http://", "http://admin:hunter22@")
    clients = fleet()
    summary = record(sources(url, ("s3cr3t-token-value",)), out, T0, T0 + 30, clients=clients)
    metas: list[dict[str, Any]] = []
    signals = list(read_jsonl(out, metas.append))
    with gzip.open(out, "rt") as f:
        text = f.read()
    assert "hunter22" not in text and "s3cr3t-token-value" not in text
    (meta,) = metas
    assert meta["recorded_by"] == "watcher record" and meta["replicas"] == ["tfs-1"]
    assert meta["failures"] == [{"target": "tfs-1", "ts": T0 + 20, "kind": "oom", "source": "docker"}]
    assert {q["id"]: q["step_s"] for q in meta["queries"]} == {"error_ratio": 1.0, "slow-check": 5.0}

    logs = [s for s in signals if isinstance(s, LogRecord)]
    assert [(s.ts - T0, s.target.container, s.target.service) for s in logs] == [
        (pytest.approx(1), "tfs-1", "m"),
        (pytest.approx(2), "tfs-1", "m"),
        (pytest.approx(3), "tfs-1", "m"),
    ]
    assert "leaked" in logs[1].message and "s3cr3t" not in logs[1].message
    events = [s for s in signals if isinstance(s, Lifecycle)]
    assert [(e.kind, e.exit_code) for e in events] == [
        (LifecycleKind.START, None),
        (LifecycleKind.OOM, None),
        (LifecycleKind.OOM, None),  # both events are recorded as Docker sent them
        (LifecycleKind.DIE, 137),
    ]
    samples = [s for s in signals if isinstance(s, Sample)]
    err = [s for s in samples if s.series == "error_ratio" and s.target is not None]
    assert err[0].target is not None and err[0].target.service == "m"  # the watched container's Target
    assert err[0].labels == {"replica": "tfs-1"}
    stale = [s for s in err if s.stale]
    assert [(s.ts - T0, s.value) for s in stale] == [(pytest.approx(2), pytest.approx(0.1))]
    assert len([s for s in err if not s.stale]) == 30  # 31 grid points, one missing
    unwatched = [s for s in samples if s.series == "error_ratio" and s.target is None and not s.stale]
    assert len(unwatched) == 1  # kept without a target, as the live source keeps it
    slow = [s for s in samples if s.series == "slow-check"]
    assert [s.ts - T0 for s in slow] == [pytest.approx(x) for x in (0, 5, 10, 15, 20, 25, 30)]
    assert {c["step"] for c in PromHandler.calls} == {"1", "5"}
    assert summary.lines == 3 and summary.events == 4 and summary.samples == len(samples)


def test_no_prometheus_records_docker_only(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    summary = record(sources(None), out, T0, T0 + 30, clients=fleet())
    assert summary.samples == 0 and summary.lines == 3
    assert json.loads(out.read_text().splitlines()[0])["queries"] == []


@pytest.mark.parametrize(
    ("limits", "what"),
    [(RecordLimits(max_lines=2), "--max-lines"), (RecordLimits(max_samples=10), "--max-samples")],
)
def test_a_bound_stops_the_recording_and_writes_nothing(
    prometheus: str, tmp_path: Path, limits: RecordLimits, what: str
) -> None:
    out = tmp_path / "r.jsonl.gz"
    with pytest.raises(RecordLimitError, match=what) as caught:
        record(sources(prometheus), out, T0, T0 + 30, limits=limits, clients=fleet())
    assert "nothing written" in str(caught.value) and "--since/--until" in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one


def test_large_ranges_are_split_into_queries_prometheus_accepts(prometheus: str, tmp_path: Path) -> None:
    record(sources(prometheus), tmp_path / "r.jsonl", T0, T0 + 25_000, clients=fleet())
    err = [c for c in PromHandler.calls if c["query"] == "err_ratio"]
    assert len(err) == 3
    assert all((float(c["end"]) - float(c["start"])) / float(c["step"]) < 11_000 for c in err)
    assert float(err[1]["start"]) == float(err[0]["end"]) + 1  # no point twice, none left out


def test_when_takes_durations_iso_and_epoch() -> None:
    assert parse_when("2h", T0) == T0 - 7200
    assert parse_when("1800000000.5", T0) == 1800000000.5
    assert parse_when("2027-01-15T08:00:00Z", T0) == 1800000000.0
    with pytest.raises(ValueError, match="not a time"):
        parse_when("yesterday", T0)


def test_cli_refuses_a_bad_range_without_touching_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from watcher.cli import app

    monkeypatch.setenv("WATCHER_ENGINES", json.dumps({"local": "tcp://127.0.0.1:9"}))  # nothing listens
    out = tmp_path / "r.jsonl"
    result = CliRunner().invoke(app, ["record", "--since", "yesterday", "--out", str(out)])
    assert result.exit_code == 2 and "'yesterday' is not a time" in result.output
    result = CliRunner().invoke(app, ["record", "--since", "1h", "--until", "2h", "--out", str(out)])
    assert result.exit_code == 2 and "the range is empty" in result.output
    assert not out.exists()
