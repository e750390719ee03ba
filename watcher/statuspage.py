"""The API's ``/`` page: what the watcher sees and does, for a person, from the ``/status`` document.

Why its own page, server-rendered: the operator at 3 a.m. opens a browser on the watcher's address,
and neither a JSON dump nor a single-page app (a bundle to build, ship and keep safe) serves them.
The page is rendered from exactly the document ``/status`` returns, so the two never disagree, and
it needs no JavaScript: a meta refresh keeps it current.

Everything in that document may come from outside the watcher -- container names and labels are
whatever a deployer chose, evidence quotes log lines a client can put anything into -- so every
value goes through :func:`html.escape` (quotes too: values also land in attributes), links are
built only from integer incident ids, and the page is served with a Content-Security-Policy that
allows no script, no frame, no form and no style but the page's own stylesheet (pinned by hash):
markup that ever slipped through escaping could still not run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from collections.abc import Iterable, Mapping
from typing import Any

from watcher.timefmt import format_rfc3339

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1f24;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #d0d7de}
h3{font-size:1em;margin:.8em 0 .3em}
table{border-collapse:collapse;width:100%;margin:.3em 0}
th,td{text-align:left;vertical-align:top;padding:.25em .6em;border-bottom:1px solid #eaeef2}
th{background:#f6f8fa;font-weight:600}
code,.ev{font-family:ui-monospace,monospace;font-size:.92em;word-break:break-all}
.muted{color:#57606a}.badge{display:inline-block;padding:.05em .5em;border-radius:.8em;font-size:.85em;
font-weight:600;border:1px solid #d0d7de;background:#f6f8fa}
.ok{background:#dafbe1;border-color:#4ac26b}.warn{background:#fff8c5;border-color:#d4a72c}
.bad{background:#ffebe9;border-color:#ff8182}
.incident{border:1px solid #d0d7de;border-radius:6px;padding:.5em .8em;margin:.6em 0}
""".strip()

_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()

CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src 'none'; script-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""No script, no frame, no form, no fetch; only the page's own stylesheet, pinned by its hash."""

HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
"""What the API sends with the page (``Content-Type: text/html; charset=utf-8`` besides)."""

CONTENT_TYPE = "text/html; charset=utf-8"
REFRESH_S = 5


def e(value: Any) -> str:
    """Any value as escaped text (None as an em dash): the one way a value reaches the page."""
    if value is None:
        return "\u2014"
    return html.escape(str(value), quote=True)


def when(ts: Any, now: float) -> str:
    """A timestamp as "12s ago" with the RFC 3339 time as its tooltip."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
        return e(None)
    return f'<span title="{e(format_rfc3339(float(ts)))}">{e(ago(now - float(ts)))}</span>'


def ago(seconds: float) -> str:
    if seconds < 0:
        return f"in {duration(-seconds)}"
    return f"{duration(seconds)} ago"


def duration(seconds: Any) -> str:
    """Seconds as the two largest units ("1h 5m", "42s"); an em dash for none."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return "\u2014"
    s = float(seconds)
    if s < 10:
        return f"{s:.1f}s"
    whole = round(s)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0s"


def _badge(text: str, kind: str = "") -> str:
    return f'<span class="badge {e(kind)}">{e(text)}</span>'


def _incident_link(incident: Mapping[str, Any]) -> str:
    """``#id`` linking to the incident's JSON; only an integer id makes a link (no URL from input)."""
    ident = incident.get("id")
    if isinstance(ident, int) and not isinstance(ident, bool):
        return f'<a href="/incidents/{ident}">#{ident}</a>'
    return e(f"#{ident}")


_STATE_KIND = {"running": "warn", "resolved": "ok", "dry_run": "", "held": "bad", "failed": "bad", "refused": ""}
_STEP_KIND = {"done": "ok", "intent": "warn", "failed": "bad", "skipped": ""}


def _table(head: Iterable[str], rows: list[list[str]], empty: str) -> str:
    """Cells are already escaped markup; headers are the page's own words."""
    if not rows:
        return f'<p class="muted">{e(empty)}</p>'
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _health(target: Mapping[str, Any]) -> str:
    running, health = target.get("running"), target.get("health")
    if running is None:
        return _badge("no container")
    if not running:
        return _badge("stopped", "bad")
    if health == "unhealthy":
        return _badge("unhealthy", "bad")
    if health == "starting":
        return _badge("starting", "warn")
    return _badge(str(health) if health else "running", "ok")


def _weight(target: Mapping[str, Any]) -> str:
    weight, original = target.get("weight"), target.get("original_weight")
    if weight is None:
        return e(None)
    text = e(weight) if original in (None, weight) else f"{e(weight)} <span class='muted'>of {e(original)}</span>"
    return f"{text} {_badge('drained', 'bad')}" if weight == 0 else text


def _findings(findings: list[Mapping[str, Any]], now: float) -> str:
    if not findings:
        return '<span class="muted">none</span>'
    items = []
    for f in findings:
        eta = f.get("eta_s")
        eta_text = f" · ETA {e(duration(eta))}" if eta is not None else ""
        evidence = f.get("evidence") or ""
        items.append(
            f"<div><code>{e(f.get('rule'))}</code> {_badge(str(f.get('predicts') or '?'), 'warn')}"
            f"{eta_text} · since {when(f.get('since'), now)}"
            + (f'<div class="ev">{e(evidence)}</div>' if evidence else "")
            + "</div>"
        )
    return "".join(items)


def _replicas(status: Mapping[str, Any], now: float) -> str:
    targets: Mapping[str, Any] = status.get("targets") or {}
    rows = []
    for key, t in targets.items():
        incident = t.get("incident")
        rows.append(
            [
                f"<strong>{e(t.get('container') or key)}</strong><br><span class='muted'>{e(key)}</span>",
                e(t.get("service") or None),
                _health(t),
                _weight(t),
                _findings(list(t.get("findings") or []), now),
                _incident_link(incident) + " " + _badge(str(incident.get("state")), "warn") if incident else e(None),
            ]
        )
    head = ("Replica", "Service", "Health", "Weight", "Active findings", "Incident")
    return "<h2>Replicas</h2>" + _table(head, rows, "No replicas seen yet.")


def _steps(steps: list[Mapping[str, Any]], now: float) -> str:
    rows = [
        [
            e(s.get("idx")),
            f"<code>{e(s.get('name'))}</code>",
            _badge(str(s.get("status")), _STEP_KIND.get(str(s.get("status")), "")),
            when(s.get("started"), now),
            e(duration(s.get("duration_s"))) if s.get("ended") is not None else _badge("in progress", "warn"),
            f'<span class="ev">{e(s.get("detail") or "")}</span>',
        ]
        for s in steps
    ]
    return _table(("#", "Step", "Status", "Started", "Took", "Detail"), rows, "No steps yet.")


def _incident(incident: Mapping[str, Any], now: float) -> str:
    state = str(incident.get("state"))
    finding: Mapping[str, Any] = incident.get("finding") or {}
    evidence = finding.get("evidence") or []
    if isinstance(evidence, str):
        evidence = [evidence]
    took = (
        f"took {e(duration(incident.get('duration_s')))}"
        if incident.get("closed") is not None
        else f"open for {e(duration(now - float(incident.get('opened') or now)))}"
    )
    eta = finding.get("eta_s")
    parts = [
        f'<div class="incident"><h3>{_incident_link(incident)} {_badge(state, _STATE_KIND.get(state, ""))} '
        f"<strong>{e(incident.get('target'))}</strong> · <code>{e(incident.get('rule'))}</code> "
        f"{_badge(str(incident.get('predicts')), 'warn')}"
        + (f" {_badge('dry run')}" if incident.get("dry_run") else "")
        + "</h3>",
        f"<p class='muted'>opened {when(incident.get('opened'), now)} · {took}"
        + (f" · predicted ETA {e(duration(eta))}" if eta is not None else "")
        + "</p>",
    ]
    if evidence:
        parts.append("".join(f'<div class="ev">{e(line)}</div>' for line in evidence))
    if incident.get("note"):
        parts.append(f"<p>{e(incident.get('note'))}</p>")
    parts.append(_steps(list(incident.get("steps") or []), now))
    parts.append("</div>")
    return "".join(parts)


def _incidents(status: Mapping[str, Any], now: float) -> str:
    recent: list[Mapping[str, Any]] = list(status.get("recent_incidents") or [])
    targets: Mapping[str, Any] = status.get("targets") or {}
    open_ = {i["id"]: i for i in recent if i.get("closed") is None}
    for t in targets.values():
        if t.get("incident"):
            open_.setdefault(t["incident"].get("id"), t["incident"])
    closed = [i for i in recent if i.get("closed") is not None]
    out = ["<h2>Open incidents</h2>"]
    out.append("".join(_incident(i, now) for i in open_.values()) or '<p class="muted">None open.</p>')
    out.append("<h2>Recent incidents</h2>")
    out.append("".join(_incident(i, now) for i in closed) or '<p class="muted">No incidents yet.</p>')
    return "".join(out)


def _policy(status: Mapping[str, Any], now: float) -> str:
    policy: Mapping[str, Any] = status.get("policy") or {}
    out = ["<h2>Policy</h2>"]
    if "unavailable" in policy:
        return out[0] + f"<p>{_badge('unavailable', 'bad')} {e(policy['unavailable'])}</p>"
    mode = [
        _badge("paused", "bad") if policy.get("paused") else _badge("acting", "ok"),
        _badge("dry run", "warn") if policy.get("dry_run") else _badge("live actions", "ok"),
    ]
    budgets = policy.get("restart_budgets") or []
    budget_text = ", ".join(f"{e(b.get('count'))} restarts per {e(duration(b.get('per_s')))}" for b in budgets)
    out.append(f"<p>{' '.join(mode)}" + (f" · restart budget: {budget_text}" if budget_text else "") + "</p>")
    silences = [
        [
            "".join(f"<code>{e(k)}={e(v)}</code> " for k, v in (s.get("matchers") or {}).items()),
            when(s.get("until"), now),
            e(s.get("comment") or ""),
        ]
        for s in policy.get("silences") or []
    ]
    out.append("<h3>Silences</h3>" + _table(("Matchers", "Until", "Comment"), silences, "No active silences."))
    restarts: Mapping[str, list[float]] = policy.get("restarts") or {}
    breakers: Mapping[str, Any] = policy.get("breakers") or {}
    per = max((float(b.get("per_s") or 0) for b in budgets), default=0.0)
    rows = []
    for key in sorted(set(restarts) | set(breakers)):
        used = [t for t in restarts.get(key, []) if isinstance(t, (int, float)) and (not per or now - t < per)]
        breaker = breakers.get(key)
        rows.append(
            [
                e(key),
                e(len(used)),
                when(max(used), now) if used else e(None),
                _badge("open: not restarting", "bad") + " since " + when(breaker.get("tripped_at"), now)
                if breaker
                else _badge("closed", "ok"),
            ]
        )
    out.append(
        "<h3>Restart budgets</h3>"
        + _table(("Replica", "Restarts in window", "Last restart", "Circuit breaker"), rows, "No restarts yet.")
    )
    return "".join(out)


def _watcher(status: Mapping[str, Any], now: float) -> str:
    rows = [
        [e(s.get("name")), _badge("connected", "ok") if s.get("connected") else _badge("disconnected", "bad")]
        for s in status.get("sources") or []
        if isinstance(s, Mapping)
    ]
    blind: Mapping[str, Any] = status.get("blind") or {}
    notes = []
    if blind.get("prometheus_unreachable_since"):
        notes.append(
            f"{_badge('blind', 'bad')} Prometheus unreachable since {when(blind['prometheus_unreachable_since'], now)}"
        )
    queues: Mapping[str, Any] = status.get("alert_queues") or {}
    for name, q in queues.items():
        notes.append(
            f"alerts to <code>{e(name)}</code>: {e(q.get('queued', 0))} queued, {e(q.get('delivered', 0))} delivered"
        )
    return "<h2>Watcher</h2>" + "".join(f"<p>{n}</p>" for n in notes) + _table(("Source", "State"), rows, "No sources.")


def render(status: Mapping[str, Any], now: float, refresh_s: int = REFRESH_S) -> str:
    """The whole page for one ``/status`` document, as of ``now`` (the "ago" times)."""
    policy: Mapping[str, Any] = status.get("policy") or {}
    flags = []
    if policy.get("paused"):
        flags.append(_badge("PAUSED", "bad"))
    if policy.get("dry_run"):
        flags.append(_badge("DRY RUN", "warn"))
    body = "".join(
        (
            f"<h1>serving-watcher {' '.join(flags)}</h1>",
            f"<p class='muted'>as of {e(format_rfc3339(now))} · refreshes every {int(refresh_s)}s · "
            "JSON: <a href='/status'>/status</a>, <a href='/metrics'>/metrics</a></p>",
            _replicas(status, now),
            _incidents(status, now),
            _policy(status, now),
            _watcher(status, now),
        )
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{int(refresh_s)}'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<meta name='referrer' content='no-referrer'>"
        f"<title>serving-watcher status</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )
