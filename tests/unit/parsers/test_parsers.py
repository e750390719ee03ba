"""Every parser against the real lines in ``samples/``, plus the edge cases that matter."""

from __future__ import annotations

import random
import time

import pytest
from parser_samples import SAMPLES, sample_lines

from watcher.parsers import (
    PARSERS,
    StickyDetector,
    detect,
    docker_events,
    grpc,
    jsonlog,
    kernel,
    nginx,
    normalize_level,
    parse,
    python_servers,
    tfserving,
)
from watcher.timefmt import parse_iso

KINDS_WITH_SAMPLES = ["tfserving", "nginx", "gunicorn", "uvicorn", "python", "docker_events", "kernel", "grpc", "json"]


def _cases() -> list[tuple[str, str]]:
    return [(kind, line) for kind in KINDS_WITH_SAMPLES for line in sample_lines(kind)]


@pytest.mark.parametrize(("kind", "line"), _cases())
def test_every_sample_is_detected_and_parsed_by_its_kind(kind: str, line: str) -> None:
    assert detect(line) == kind
    parsed = parse(line)
    assert parsed.kind == kind
    assert parsed.level in ("debug", "info", "warning", "error", "fatal", "")
    assert parsed.message
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.fields.items())
    # the declared kind gives the same answer as detection
    assert parse(line, kind) == parsed


@pytest.mark.parametrize("line", sample_lines("raw"))
def test_unstructured_failure_lines_stay_raw_and_intact(line: str) -> None:
    parsed = parse(line)
    assert parsed.message == line or parsed.kind != "raw"


def test_sample_files_cite_their_source() -> None:
    for path in SAMPLES.glob("*.log"):
        lines = path.read_text(encoding="utf-8").splitlines()
        first_sample = next(n for n, line in enumerate(lines) if line and not line.startswith("#"))
        assert any(("src:" in line or "synthetic:" in line) for line in lines[:first_sample]), (
            f"{path.name}: first sample has no source comment"
        )


# --------------------------------------------------------------------------- tfserving


def test_tfserving_glog_fields_and_servable() -> None:
    p = tfserving.parse(
        "2020-07-06 14:47:52.027866: I tensorflow_serving/core/loader_harness.cc:87] "
        "Successfully loaded servable version {name: eff_savd_model version: 1}"
    )
    assert p is not None
    assert p.level == "info"
    assert p.fields["file"] == "tensorflow_serving/core/loader_harness.cc"
    assert p.fields["line_no"] == "87"
    assert p.fields["model_name"] == "eff_savd_model"
    assert p.fields["version"] == "1"
    assert p.message.startswith("Successfully loaded")
    assert p.ts == pytest.approx(parse_iso("2020-07-06T14:47:52.027866Z"))


def test_tfserving_no_versions_names_the_model() -> None:
    line = next(s for s in sample_lines("tfserving") if "/bitnami/model-data" in s)
    p = tfserving.parse(line)
    assert p is not None and p.level == "warning"
    assert p.fields["model_name"] == "inception"


def test_tfserving_evhttp_classic_glog_and_failure() -> None:
    ev = tfserving.parse("[evhttp_server.cc : 238] NET_LOG: Entering the event loop ...")
    assert ev is not None and ev.fields["file"] == "evhttp_server.cc" and ev.fields["line_no"] == "238"
    assert ev.message == "NET_LOG: Entering the event loop ..."
    g = tfserving.parse(
        "E0501 10:00:00.123456    12 tensorflow_serving/util/retrier.cc:37] "
        "Loading servable: {name: m version: 3} failed: x"
    )
    assert g is not None and g.level == "error" and g.ts is None
    assert g.fields["thread"] == "12" and g.fields["model_name"] == "m" and g.fields["version"] == "3"
    f = tfserving.parse("2024-05-01 10:00:00.000001: F tensorflow_serving/model_servers/main.cc:1] boom")
    assert f is not None and f.level == "fatal"


# --------------------------------------------------------------------------- nginx


def test_nginx_error_upstream_attribution() -> None:
    p = nginx.parse(
        "2020/10/17 11:50:56 [error] 28#28: *2 connect() failed (111: Connection refused) while connecting "
        'to upstream, client: 172.17.0.1, server: , request: "GET / HTTP/1.1", upstream: "http://127.0.0.1:3001/", '
        'host: "localhost:8080"'
    )
    assert p is not None and p.level == "error"
    assert p.message == "connect() failed (111: Connection refused) while connecting to upstream"
    assert p.fields["upstream_addr"] == "127.0.0.1:3001"
    assert p.fields["errno"] == "111"
    assert p.fields["server"] == ""
    assert p.fields["request"] == "GET / HTTP/1.1"
    assert p.fields["host"] == "localhost:8080"


def test_nginx_access_default_format_picks_the_last_upstream() -> None:
    lines = sample_lines("nginx")
    p = nginx.parse(lines[-1])
    assert p is not None and p.level == "error"
    assert p.fields["status"] == "504"
    assert p.fields["upstream_addr"] == "172.18.0.4:8501"
    assert p.fields["upstream_addrs"] == "172.18.0.3:8501, 172.18.0.4:8501"
    assert p.fields["upstream_status"] == "504"
    assert p.fields["request_time"] == "60.002"
    assert p.fields["method"] == "POST" and p.fields["path"] == "/v1/models/m:predict"
    assert p.ts == pytest.approx(parse_iso("2024-05-01T10:00:01Z"))


def test_nginx_access_internal_redirect_list() -> None:
    line = (
        '10.0.0.9 - - [01/May/2024:10:00:00 +0200] "GET / HTTP/1.1" 200 5 "-" "curl/8" '
        "10.0.0.1:80 : 10.0.0.2:80 502 : 200 0.100"
    )
    p = nginx.parse(line)
    assert p is not None
    assert p.fields["upstream_addr"] == "10.0.0.2:80"
    assert p.fields["upstream_status"] == "200"
    assert p.ts == pytest.approx(parse_iso("2024-05-01T08:00:00Z"))


def test_nginx_configurable_formats_from_real_issues() -> None:
    lines = [line for line in (SAMPLES / "nginx_custom_format.log").read_text().splitlines() if line]
    formats = [line.removeprefix("# format: ") for line in lines if line.startswith("# format: ")]
    samples = [line for line in lines if not line.startswith("#")]
    with pytest.raises(ValueError, match="adjacent"):
        nginx.AccessLogFormat.compile(formats[0])
    fmt = nginx.AccessLogFormat.compile(formats[1])
    p = nginx.parse_access(samples[1], fmt)
    assert p is not None
    assert p.fields["request_time"] == "0.010"
    assert "upstream_addr" not in p.fields  # "-" means no upstream was tried
    assert nginx.parse_access(samples[1]) is None  # not the default format
    assert nginx.parse_access(samples[0]) is None


def test_nginx_access_rejects_lines_of_another_shape() -> None:
    assert nginx.parse_access("hello world") is None
    assert nginx.parse_access('1.2.3.4 - - [x] "GET / HTTP/1.1" abc 1 "-" "-"') is None


# --------------------------------------------------------------------------- python servers


def test_gunicorn_sigkill_and_timeout() -> None:
    p = python_servers.parse_gunicorn(
        "[2020-09-12 05:37:52 +0000] [18] [ERROR] Worker (pid:21) was sent SIGKILL! Perhaps out of memory?"
    )
    assert p is not None and p.level == "error"
    assert p.fields == {"pid": "18", "worker_pid": "21", "signal": "SIGKILL"}
    assert p.ts == pytest.approx(parse_iso("2020-09-12T05:37:52Z"))
    t = python_servers.parse_gunicorn("[2024-01-09 13:24:39 +0000] [1637] [CRITICAL] WORKER TIMEOUT (pid:7214)")
    assert t is not None and t.level == "fatal" and t.fields["worker_pid"] == "7214"


def test_uvicorn_access_and_error() -> None:
    a = python_servers.parse_uvicorn('INFO:     127.0.0.1:5000 - "POST /predict HTTP/1.1" 500 Internal Server Error')
    assert a is not None and a.fields == {
        "client": "127.0.0.1:5000",
        "method": "POST",
        "path": "/predict",
        "status": "500",
    }
    e = python_servers.parse_uvicorn("ERROR:    Exception in ASGI application")
    assert e is not None and e.level == "error" and e.message == "Exception in ASGI application"
    assert python_servers.parse_uvicorn("INFO: misaligned") is None


def test_traceback_last_line() -> None:
    p = python_servers.parse_traceback(
        "tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating tensor with shape[1,2]"
    )
    assert p is not None and p.fields["exception"] == "ResourceExhaustedError"
    assert p.fields["exception_module"] == "tensorflow.python.framework.errors_impl"
    assert python_servers.parse_traceback("Some words: not an exception") is None


# --------------------------------------------------------------------------- docker, kernel, grpc, json


def test_docker_events_die_health_and_lifecycle() -> None:
    from watcher.parsers import lifecycle_kind

    die, unhealthy, restart = (docker_events.parse(line) for line in sample_lines("docker_events")[1:])
    assert (
        die is not None and die.fields["exit_code"] == "137" and die.fields["name"] == "tfs-1" and die.level == "error"
    )
    assert (
        unhealthy is not None
        and unhealthy.fields["health"] == "unhealthy"
        and unhealthy.fields["event"] == "health_status"
    )
    oom = docker_events.parse(sample_lines("docker_events")[0])
    assert oom is not None and oom.fields["event"] == "oom"
    assert oom.fields["annotation.io.kubernetes.container.ports"].startswith('[{"name":"notebook-port",')
    assert oom.ts == pytest.approx(parse_iso("2019-05-04T23:05:45.011072877Z"))
    try:
        kinds = [lifecycle_kind(p) for p in (oom, die, unhealthy, restart) if p is not None]
    except ValueError:  # watcher.model does not import on this interpreter (reported)
        pytest.skip("watcher.model not importable")
    assert [k.value if k else None for k in kinds] == ["oom", "die", "health_status", "restart"]


def test_kernel_cgroup_oom_names_container() -> None:
    p = kernel.parse(sample_lines("kernel")[5])
    assert p is not None
    assert p.fields["container_id"].startswith("00748bf4e957")
    assert p.fields["process"] == "java" and p.fields["constraint"] == "CONSTRAINT_NONE"
    q = kernel.parse(sample_lines("kernel")[3])
    assert q is not None and q.fields["scope"] == "cgroup" and q.fields["anon_rss"] == "164992"


def test_grpc_status_and_details() -> None:
    p = grpc.parse('AbortionError(code=StatusCode.UNAVAILABLE, details="Connect Failed")')
    assert p is not None and p.fields["grpc_status"] == "UNAVAILABLE" and p.fields["details"] == "Connect Failed"
    assert grpc.parse("nothing to see") is None


def test_json_lines_and_fallbacks() -> None:
    p = jsonlog.parse('{"level":50,"time":1714557600000,"msg":"upstream tfs-2 failed","pid":7}')
    assert p is not None and p.level == "error" and p.ts == 1714557600.0 and p.message == "upstream tfs-2 failed"
    assert p.fields["pid"] == "7"
    q = jsonlog.parse(
        '{"asctime": "x", "levelname": "WARNING", "message": "m", "@timestamp": "2024-05-01T10:00:00+02:00"}'
    )
    assert q is not None and q.level == "warning" and q.ts == parse_iso("2024-05-01T08:00:00Z")
    for bad in ("{not json}", "[1,2]", "{" + '"a":' * 5000 + "1" + "}" * 5000, '{"a": [' * 100000 + "}", "{}x"):
        jsonlog.parse(bad)  # must not raise
        assert parse(bad).kind in ("json", "raw")


def test_levels_normalise() -> None:
    assert [normalize_level(x) for x in ("W", "WARN", "warning", "CRITICAL", "err", 30, 60, "?", None)] == [
        "warning",
        "warning",
        "warning",
        "fatal",
        "error",
        "info",
        "fatal",
        "",
        "",
    ]


# --------------------------------------------------------------------------- detection


def test_sticky_detector_settles_and_tolerates_foreign_lines() -> None:
    sticky = StickyDetector(agree=3, release=4)
    lines = sample_lines("tfserving")
    for line in lines[:3]:
        sticky.parse(line)
    assert sticky.kind == "tfserving"
    tb = sticky.parse("RuntimeError: something broke")
    assert tb.kind == "python" and sticky.kind == "tfserving"
    for _ in range(4):
        sticky.parse("plain words")
    assert sticky.kind is None


def test_parsers_never_raise_and_stay_fast_on_hostile_lines() -> None:
    rng = random.Random(7)
    real = [line for kind in KINDS_WITH_SAMPLES for line in sample_lines(kind)]
    hostile = [
        "a" * 16384,
        "[" * 16384,
        "{" * 16384,
        "2024/05/01 10:00:00 [error] 1#1: " + ", client: " * 1600,
        "1.2.3.4 - - [" + '"' * 16000,
        "StatusCode." * 1400,
        "Killed process " * 1000,
        "2024-05-01T10:00:00Z container die x (" + "a=b, " * 3000 + ")",
        "I0501 10:00:00.1 " + " " * 16000,
        "\x00\xff\ud800" * 3000,
    ]
    for _ in range(2000):
        base = rng.choice(real)
        cut = rng.randrange(len(base) + 1)
        hostile.append(
            base[:cut] + "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(40))) + base[cut:]
        )
    start = time.perf_counter()
    for line in hostile:
        line = line[:16384]
        detect(line)
        parse(line)
        for parser in PARSERS.values():
            parser(line)
    assert time.perf_counter() - start < 20


def test_nginx_access_formats_of_ingress_and_nginx_proxy_are_read() -> None:
    """ingress-nginx's upstreaminfo (now and before 0.22) and nginx-proxy's vhost lines give status
    and the upstream that answered last (kubernetes/ingress-nginx#9443, #3610; rancher-active-proxy#6)."""
    ingress = nginx.parse(
        '108.162.227.25 - - [08/Mar/2023:16:02:45 +0000] "GET / HTTP/1.1" 504 562 "-" "Mozilla/5.0 (X11)" 1100 14.998'
        " [pc-dev-example-web-service-80] [] 192.168.215.1:80, 192.168.215.2:80 0, 0 5.000, 5.000 504, 504 a7c98d98"
    )
    assert ingress is not None and ingress.kind == "nginx"
    assert ingress.fields["status"] == "504" and ingress.fields["upstream_addr"] == "192.168.215.2:80"
    old = nginx.parse(
        '223.65.108.109 - [223.65.108.109] - - [29/Dec/2018:16:02:02 +0000] "GET /actuator/health HTTP/1.1" 502 157'
        ' "-" "PostmanRuntime/7.4.0" 240 0.002 [dop-gateway-server-14523] 10.36.0.1:8888 0 0.000 502 d22a7685'
    )
    assert old is not None and old.fields["upstream_status"] == "502"
    vhost = nginx.parse(
        'test.myservice.com 88.153.6.236 - admin [20/Jan/2017:08:52:14 +0000] "GET /api/industries HTTP/2.0" 502 638'
        ' "-" "Mozilla/5.0 (Macintosh)"'
    )
    assert vhost is not None and vhost.fields["status"] == "502" and vhost.fields["host"] == "test.myservice.com"


def test_headerless_nginx_error_and_bare_gunicorn_lines_are_read() -> None:
    """Pasted or shipped without their headers (nginx-proxy/nginx-proxy#1048, devilry/devilry-django#1297)."""
    e = nginx.parse(
        "connect() failed (113: Host is unreachable) while connecting to upstream, client: 172.17.0.1, server: a.eu,"
        ' request: "GET /feed/ HTTP/1.1", upstream: "http://172.17.0.7:2368/feed/", host: "a.eu"'
    )
    assert e is not None and e.message.startswith("connect() failed (113")
    assert e.fields["errno"] == "113"
    # no header, no fixed position: the line classifies but names no replica (issue #14)
    assert "upstream_addr" not in e.fields and "upstream" not in e.fields
    assert nginx.parse("connect() failed somewhere else") is None
    forged = 'upstream timed out (110: x) while connecting to upstream, client: 1.2.3.4, upstream: "http://b:1/"'
    for wrapped in ('{"request": "' + forged + '"}', "nginx-1  | " + forged):
        assert nginx.parse(wrapped) is None, wrapped  # a client's text inside a record is not nginx's line
    g = python_servers.parse_gunicorn("[CRITICAL] WORKER TIMEOUT (pid:414077)")
    assert g is not None and g.level == "fatal" and g.fields["worker_pid"] == "414077" and g.ts is None
    assert detect("[INFO] Booting worker with pid: 575558") == "gunicorn"
    assert python_servers.parse_gunicorn("[notice] not gunicorn") is None
