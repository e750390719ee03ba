"""The status page: every untrusted value escaped, an empty watcher, an incident with its steps,
and the API serving it under the same token rule as ``/status`` with a script-free CSP."""

from __future__ import annotations

import socket
from html.parser import HTMLParser
from typing import Any

from prometheus_client import CollectorRegistry

from watcher import statuspage
from watcher.api import Api

NOW = 1_700_000_100.0
HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"


def incident(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": 7,
        "target": "local/tfs-1",
        "service": "tfs",
        "rule": "tfserving.http_5xx",
        "predicts": "http_5xx",
        "opened": NOW - 40,
        "closed": None,
        "duration_s": None,
        "state": "running",
        "dry_run": False,
        "note": "",
        "finding": {"eta_s": 30.0, "evidence": ["5xx ratio 0.93 over 20 requests"]},
        "steps": [
            {
                "idx": 0,
                "name": "drain",
                "params": {},
                "status": "done",
                "started": NOW - 39,
                "ended": NOW - 38.5,
                "duration_s": 0.5,
                "detail": "weight 3 -> 0",
            },
            {
                "idx": 1,
                "name": "restart",
                "params": {},
                "status": "intent",
                "started": NOW - 38,
                "ended": None,
                "duration_s": None,
                "detail": "",
            },
        ],
    }
    doc.update(over)
    return doc


def status(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "targets": {
            "local/tfs-1": {
                "container": "tfs-1",
                "engine": "local",
                "service": "tfs",
                "running": True,
                "health": "healthy",
                "weight": 0,
                "original_weight": 3,
                "findings": [
                    {
                        "rule": "tfserving.http_5xx",
                        "predicts": "http_5xx",
                        "severity": "critical",
                        "since": NOW - 45,
                        "eta_s": 30.0,
                        "evidence": "upstream 127.0.0.1:8501 answered 500",
                        "observed": NOW - 1,
                    }
                ],
                "incident": incident(),
            },
            "local/tfs-2": {
                "container": "tfs-2",
                "engine": "local",
                "service": "tfs",
                "running": True,
                "health": None,
                "weight": 2,
                "original_weight": 2,
                "findings": [],
                "incident": None,
            },
        },
        "policy": {
            "dry_run": False,
            "paused": True,
            "silences": [{"matchers": {"target": "local/tfs-9"}, "until": NOW + 600, "comment": "maintenance"}],
            "breakers": {},
            "restarts": {"local/tfs-1": [NOW - 38]},
            "restart_budgets": [{"count": 3, "per_s": 3600.0}],
        },
        "recent_incidents": [
            incident(),
            incident(id=6, state="resolved", closed=NOW - 3000, opened=NOW - 3100, duration_s=100.0),
        ],
        "alert_queues": {"alertmanager": {"queued": 0, "delivered": 4}},
        "blind": {"prometheus_unreachable_since": None, "alerting": False},
        "sources": [{"name": "docker:local", "connected": True, "last_error": None}],
    }
    doc.update(over)
    return doc


class Page(HTMLParser):
    """What a browser would build: elements by tag, attributes, and the text."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def test_untrusted_values_are_text_never_markup() -> None:
    doc = status()
    hostile_target = doc["targets"]["local/tfs-1"]
    hostile_target["container"] = HOSTILE
    hostile_target["findings"][0]["evidence"] = HOSTILE
    doc["recent_incidents"][0]["steps"][0]["detail"] = HOSTILE
    doc["recent_incidents"][0]["finding"]["evidence"] = [HOSTILE]
    doc["policy"]["silences"][0]["comment"] = HOSTILE
    doc["policy"]["silences"][0]["matchers"] = {HOSTILE: HOSTILE}
    page = Page(statuspage.render(doc, NOW))
    tags = {tag for tag, _ in page.tags}
    assert "script" not in tags and "img" not in tags
    assert not [a for _, attrs in page.tags for a in attrs if a.startswith("on")]
    assert page.all_text.count("<script>alert(1)</script>") >= 5  # shown, as text, everywhere it came in


def test_incident_links_come_only_from_integer_ids() -> None:
    doc = status(recent_incidents=[incident(id='1"><script>x</script>')])
    doc["targets"]["local/tfs-1"]["incident"] = None
    page = Page(statuspage.render(doc, NOW))
    hrefs = [attrs.get("href") for tag, attrs in page.tags if tag == "a"]
    assert all(h in ("/status", "/metrics") for h in hrefs)
    assert "script" not in {tag for tag, _ in page.tags}


def test_an_empty_watcher_says_so() -> None:
    page = Page(statuspage.render({"targets": {}, "policy": {}, "recent_incidents": []}, NOW)).all_text
    assert "No replicas seen yet." in page
    assert "None open." in page and "No incidents yet." in page
    assert "No active silences." in page and "No restarts yet." in page


def test_an_incident_shows_its_replica_steps_and_timings() -> None:
    page = Page(statuspage.render(status(), NOW))
    text = page.all_text
    hrefs = [attrs.get("href") for tag, attrs in page.tags if tag == "a"]
    assert "/incidents/7" in hrefs and "/incidents/6" in hrefs
    # the replica: health, drained weight of its configured one, the active finding with ETA and evidence
    assert "tfs-1" in text and "healthy" in text and "0 of 3 drained" in text
    assert "tfserving.http_5xx" in text and "ETA 30s" in text and "upstream 127.0.0.1:8501 answered 500" in text
    # the open incident with each step, its status and how long it took (or that it is still going)
    assert "open for 40s" in text and "predicted ETA 30s" in text
    assert "drain done" in text and "0.5s" in text and "weight 3 -> 0" in text
    assert "restart intent" in text and "in progress" in text
    # the closed one among recent, with its duration
    assert "took 1m 40s" in text
    # the policy
    assert "PAUSED" in text and "paused" in text
    assert "3 restarts per 1h" in text and "target=local/tfs-9" in text and "maintenance" in text
    assert "local/tfs-1 1 38s ago closed" in text


def test_an_open_circuit_breaker_and_an_unavailable_policy_are_shown() -> None:
    doc = status()
    doc["policy"]["breakers"] = {"local/tfs-1": {"tripped_at": NOW - 60, "alerted": True}}
    assert "open: not restarting since 1m ago" in Page(statuspage.render(doc, NOW)).all_text
    doc["policy"] = {"unavailable": "decision thread is busy"}
    assert "unavailable decision thread is busy" in Page(statuspage.render(doc, NOW)).all_text


def test_the_page_refreshes_itself_and_carries_no_script() -> None:
    markup = statuspage.render(status(), NOW)
    metas = [attrs for tag, attrs in Page(markup).tags if tag == "meta"]
    assert {"http-equiv": "refresh", "content": "5"} in metas
    assert "<script" not in markup.lower()


def get(api: Api, path: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body.decode()


def make_api(protect_status: bool) -> Api:
    return Api(
        ("127.0.0.1", 0),
        CollectorRegistry(),
        lambda: (True, {}),
        lambda: (True, {}),
        status,
        {},
        "t0ken",
        protect_status=protect_status,
    ).start()


def test_the_api_serves_the_page_with_a_strict_policy_on_loopback() -> None:
    api = make_api(protect_status=False)
    try:
        code, headers, body = get(api, "/")
        assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'none'" in csp and "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
        assert "tfs-1" in body and "/incidents/7" in body
    finally:
        api.stop()


def test_the_page_needs_the_token_where_status_does() -> None:
    api = make_api(protect_status=True)
    try:
        assert get(api, "/")[0] == 401
        assert get(api, "/", token="wrong")[0] == 401
        code, _, body = get(api, "/", token="t0ken")
        assert code == 200 and "tfs-1" in body
    finally:
        api.stop()


def test_the_stylesheet_matches_its_pinned_hash() -> None:
    """A browser applies the page's style only when its hash is the one the CSP names."""
    import base64
    import hashlib
    import re

    markup = statuspage.render(status(), NOW)
    css = re.search(r"<style>(.*?)</style>", markup, re.S)
    assert css is not None
    digest = base64.b64encode(hashlib.sha256(css.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in statuspage.CONTENT_SECURITY_POLICY
