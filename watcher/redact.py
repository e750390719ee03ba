"""One redaction for every URL and secret the watcher prints: status, metrics, log lines, alerts.

Configured URLs carry secrets in three places: ``user:password@`` (a Prometheus behind basic
auth), the query string (``?token=...``) and, for webhooks (Slack, Teams), the path itself. They
also reach the output by routes nobody wrote on purpose: requests and urllib3 put the URL, path
and query included, into their exception text ("Max retries exceeded with url: /hooks/T0/B0?x=1").
So redaction is applied to *text*, not only to the URLs we format ourselves:

* :func:`redact_url` -- one URL as it may be shown: scheme, host and port, the path if asked for;
  never credentials or query.
* :func:`url_secrets` -- the parts of a configured URL that must never be shown.
* :func:`redact_text` -- any text with those secrets masked (raw and percent-encoded forms) and
  every URL in it passed through :func:`redact_url`; :func:`redact_doc` does the same through a
  JSON document.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

__all__ = ["MASK", "redact_doc", "redact_text", "redact_url", "url_secrets"]

MASK = "***"
# a URL with a scheme, up to whitespace, quotes or brackets (as exception texts and log lines embed them)
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")
# urllib3: "Max retries exceeded with url: /path?query (Caused by ...)": the path of a request, query included
_REQUEST_PATH = re.compile(r"(\burl: )(/[^\s'\"]*)")


def redact_url(url: str, keep_path: bool = True) -> str:
    """The URL without credentials (``user:password@``) and query, and without its path unless kept.

    Webhook URLs often *are* the secret (Slack, Teams: the token is in the path), so messages
    about them name only the host (``https://hooks.example/...``).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # not a URL we can take apart (a bad port, say): show nothing of it
        return MASK
    if ":" in host:
        host = f"[{host}]"
    if port:
        host = f"{host}:{port}"
    path = parts.path if keep_path else ("/..." if parts.path not in ("", "/") else "")
    return f"{parts.scheme}://{host}{path}"


def url_secrets(url: str | None, keep_path: bool = True) -> list[str]:
    """What of ``url`` must never appear in output: password, username, query and its values, and
    the path unless ``keep_path``."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [parts.password or "", parts.query, parts.fragment]
    if not keep_path:
        found.append(parts.path.strip("/"))
    found = [s for s in found if len(s) >= 3]  # a one- or two-character "secret" would mask half the text
    # a token in the query may be printed on its own; short values (format=json) are no tokens
    found += [v for _, _, v in (p.partition("=") for p in parts.query.split("&")) if len(v) >= 8]
    return found


def _variants(secret: str) -> set[str]:
    """The forms a secret takes in text: as configured, percent-decoded, percent-encoded."""
    return {v for v in (secret, unquote(secret), quote(secret, safe="/"), quote(unquote(secret), safe="/")) if v}


def _redact_request_path(match: re.Match[str]) -> str:
    path = match.group(2).partition("?")[0]
    return match.group(1) + path


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret masked and every URL in it reduced by :func:`redact_url`.

    Secrets are replaced longest first, so a password that is part of a longer query value
    does not leave the rest of that value behind.
    """
    return _redact(text, _forms(secrets))


def redact_doc(doc: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of a JSON-like document with :func:`redact_text` applied to every string in it."""
    return _redact_doc(doc, _forms(secrets))


def _forms(secrets: Iterable[str]) -> list[str]:
    return sorted({v for s in secrets if s for v in _variants(s)}, key=len, reverse=True)


def _redact(text: str, forms: list[str]) -> str:
    for secret in forms:
        text = text.replace(secret, MASK)
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    return _REQUEST_PATH.sub(_redact_request_path, text)


def _redact_doc(doc: Any, forms: list[str]) -> Any:
    if isinstance(doc, str):
        return _redact(doc, forms)
    if isinstance(doc, dict):
        return {_redact_doc(k, forms): _redact_doc(v, forms) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [_redact_doc(v, forms) for v in doc]
    return doc
