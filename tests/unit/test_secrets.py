"""Secrets in the configuration never leave: not in /status, /metrics, the log, nor alert text."""

from __future__ import annotations

import functools
import io
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from prometheus_client import generate_latest

from tests.unit.conftest import Receiver
from watcher.actions.alerts import AlertmanagerAlerter, FanoutAlerter, WebhookAlerter
from watcher.actions.base import ActionError, Alert
from watcher.config import Settings
from watcher.redact import redact_text, url_secrets
from watcher.retry import Backoff
from watcher.rulepack.compile import compile_packs
from watcher.rules import SHIPPED_RULES
from watcher.service import JsonFormatter, Service

PROM_PASSWORD = "pr0m-Passw0rd"
HOOK_PATH = "hooks/T0ABC/B0DEF/XyZsecretPath"
HOOK_QUERY_TOKEN = "q-t0ken-0123456789"
SECRETS = (PROM_PASSWORD, "XyZsecretPath", HOOK_QUERY_TOKEN, "T0ABC")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {where}: {text[:2000]}"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture
def service(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, log_output: io.StringIO) -> Iterator[Service]:
    # a Docker client that needs no engine to be built (the API version given: no version probe)
    monkeypatch.setattr(docker, "DockerClient", functools.partial(docker.DockerClient, version="1.43"))
    settings = Settings(
        store=tmp_path / "watcher.db",
        engines={"local": "tcp://127.0.0.1:9"},
        api_listen=f"127.0.0.1:{free_port()}",
        prometheus_url=f"http://watcher:{PROM_PASSWORD}@127.0.0.1:9/prom?token={HOOK_QUERY_TOKEN}",
        webhook_url=f"http://127.0.0.1:9/{HOOK_PATH}?token={HOOK_QUERY_TOKEN}",
        alertmanager_url=f"http://am:{PROM_PASSWORD}@127.0.0.1:9",
    )
    svc = Service(settings, compile_packs([SHIPPED_RULES]))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is log_output:
            handler.setFormatter(JsonFormatter(settings.secrets))
    assert isinstance(svc.alerter, FanoutAlerter)
    for outbox in svc.outboxes:
        assert isinstance(outbox.sink, AlertmanagerAlerter | WebhookAlerter)
        outbox.sink.backoff = Backoff(0, 0, 1)
    yield svc
    svc.api.stop()
    svc.store.close()


def test_status_metrics_and_the_heartbeat_warning_show_no_secret(service: Service, log_output: io.StringIO) -> None:
    for source in service.live.sources:
        if source.name == "prometheus":
            source.poll_once()  # fails (nothing listens): the error is kept for /status
    status = repr(service.status())
    assert "127.0.0.1:9/prom" in status  # the source is still named, by host and path
    assert_clean(status, "/status")
    assert_clean(generate_latest(service.registry).decode(), "/metrics")
    service._heartbeat(time.time())  # queued: both receivers unreachable, a warning with the requests error text
    assert [outbox.deliver_once() for outbox in service.outboxes] == [False, False]
    logged = log_output.getvalue()
    assert logged.count("alert receiver unreachable; alerts are queued") == 2
    status = repr(service.status())
    assert "alert_queues" in status
    assert_clean(status, "/status with failed deliveries")
    assert_clean(logged, "the log")


def test_a_log_line_quoting_a_url_or_a_secret_is_masked(service: Service, log_output: io.StringIO) -> None:
    logging.getLogger("watcher.test").warning(
        "failed on %s", service.settings.webhook_url, extra={"fields": {"token": HOOK_QUERY_TOKEN}}
    )
    try:
        raise ConnectionError(f"Max retries exceeded with url: /{HOOK_PATH}?token={HOOK_QUERY_TOKEN}")
    except ConnectionError:
        logging.getLogger("watcher.test").exception("boom")
    assert_clean(log_output.getvalue(), "the log")


def test_alert_errors_name_the_host_only(receiver: Receiver) -> None:
    receiver.statuses = [400]
    hook = WebhookAlerter(f"{receiver.url}/{HOOK_PATH}?token={HOOK_QUERY_TOKEN}", sleep=lambda _: None)
    with pytest.raises(ActionError) as refused:
        hook.fire(Alert(name="A", labels={}, annotations={}, starts_at=0.0))
    assert_clean(str(refused.value), "a refused webhook's error")
    manager = AlertmanagerAlerter(f"http://am:{PROM_PASSWORD}@127.0.0.1:9", backoff=Backoff(0, 0, 1))
    with pytest.raises(ActionError) as unreachable:
        manager.fire(Alert(name="A", labels={}, annotations={}, starts_at=0.0))
    assert "127.0.0.1:9" in str(unreachable.value)
    assert_clean(str(unreachable.value), "an unreachable Alertmanager's error")


def test_redact_text_strips_credentials_queries_and_percent_encoded_secrets() -> None:
    url = f"https://u:{PROM_PASSWORD}@prom.example:9090/api?x={HOOK_QUERY_TOKEN}"
    assert redact_text(f"GET {url} failed") == "GET https://prom.example:9090/api failed"
    # requests percent-encodes the path it names: the configured form "sec ret" is printed "sec%20ret"
    text = "Max retries exceeded with url: /hooks/T0ABC/sec%20ret?x=1 (Caused by"
    assert redact_text(text, url_secrets("http://h/hooks/T0ABC/sec ret", keep_path=False)) == (
        "Max retries exceeded with url: /*** (Caused by"
    )
