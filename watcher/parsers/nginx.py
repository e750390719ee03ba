"""Nginx error and access logs, with the replica each line is about.

The load balancer's logs name the replica that failed, which the replica's own logs often cannot
(a replica that hangs writes nothing). So both parsers extract ``upstream_addr`` = ``host:port``:

* error log: ``2024/05/01 10:00:00 [error] 31#31: *5 upstream timed out (110: ...) while reading
  response header from upstream, client: ..., request: "...", upstream: "http://10.0.0.7:8501/...",
  host: "..."``;
* access log: any ``log_format``, compiled by :class:`AccessLogFormat` into a linear tokenizer
  (each variable ends at the next literal, found with ``str.find``: no regex, no backtracking).
  In ``$upstream_addr`` the *last* address of a comma list is the one that answered; the whole
  list is kept as ``upstream_addrs`` (likewise ``upstream_status``/``upstream_statuses``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from watcher.parsers.base import MONTHS, Parsed
from watcher.timefmt import epoch

KIND = "nginx"

_ERROR = re.compile(
    r"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d) \[([a-z]{1,8})\] (\d{1,10})#(\d{1,10}): (?:\*(\d{1,20}) )?"
)
_ERROR_UNDATED = re.compile(r"\[([a-z]{1,8})\] (\d{1,10})#(\d{1,10}): (?:\*(\d{1,20}) )?")
_NGINX_LEVELS = {
    "debug": "debug",
    "info": "info",
    "notice": "info",
    "warn": "warning",
    "error": "error",
    "crit": "fatal",
    "alert": "fatal",
    "emerg": "fatal",
}
LEVEL_WORDS = frozenset(_NGINX_LEVELS)
# the keys of an error line's context, in the order nginx writes them (ngx_http_log_error_handler)
_CONTEXT_ORDER = ("client", "server", "request", "subrequest", "upstream", "host", "referrer")
_CONTEXT_RANK = {key: n for n, key in enumerate(_CONTEXT_ORDER)}
_QUOTED = frozenset({"request", "subrequest", "upstream", "host", "referrer"})
# What nginx (>= 1.21.1 rejects spaces and control characters in the request line; every version
# rejects a Host with one) lets into the fields before the Referer: a request line of exactly
# METHOD SP TARGET SP PROTOCOL (HTTP/0.9: no protocol, and then no headers follow), an upstream
# URL and a Host without whitespace. A forged ", upstream: " needs spaces, so a value of another
# shape means the line's context is not the one nginx wrote.
_REQUEST_LINE = re.compile(r"[A-Z]{1,32} [^\s]+( HTTP/[0-9](\.[0-9])?)?")
_SPACELESS = re.compile(r"[^\s]*")


def upstream_host_port(url: str) -> str:
    """``http://10.0.0.7:8501/v1/models/m:predict`` → ``10.0.0.7:8501`` (unix sockets kept whole)."""
    rest = url.partition("://")[2] or url
    if rest.startswith("unix:"):
        return rest
    return rest.split("/", 1)[0]


def parse_error(line: str) -> Parsed | None:
    """Parse an error-log line; ``None`` if it does not start like one."""
    m = _ERROR.match(line)
    if m is not None:
        y, mo, d, hh, mi, ss, level, pid, tid, conn = m.groups()
        ts = epoch(int(y), int(mo), int(d), int(hh), int(mi), int(ss))
    else:  # shippers that strip the date keep "[level] pid#tid: "
        m = _ERROR_UNDATED.match(line)
        if m is None or m.group(1) not in _NGINX_LEVELS:
            return _parse_headerless(line)
        level, pid, tid, conn = m.groups()
        ts = None
    body = line[m.end() :]
    fields: dict[str, str] = {"pid": pid, "tid": tid}
    return _error_body(body, level, ts, fields, conn)


def _parse_headerless(line: str) -> Parsed | None:
    """An error line whose shipper dropped the whole header (nginx-proxy/nginx-proxy#1048 pastes
    ``connect() failed (113: Host is unreachable) while connecting to upstream, client: ...``): only
    the context trailer nginx writes after an upstream action says it is nginx's."""
    cut = line.find(" upstream, client: ", 0, 4096)
    # nginx's message starts the line ("connect() failed", "upstream timed out", "recv() failed"):
    # a record ('{...') or a prefix ('nginx-1  | ') in front is someone else's line quoting it
    if cut < 0 or not line[:1].islower() or "|" in line[:cut] or '"' in line[:cut]:
        return None
    # Without nginx's header the trailer is at no fixed position: a client's text (a JSON access
    # log's request member, a Referer) can carry the same words. The line still classifies, but it
    # names no replica: attribution only from nginx's own header-led lines (issue #14).
    return _error_body(line, "error", None, {}, None, attributable=False)


def _error_body(
    body: str, level: str, ts: float | None, fields: dict[str, str], conn: str | None, *, attributable: bool = True
) -> Parsed:
    """The message, the context trailer's fields and the errno of an error line's body."""
    if conn:
        fields["connection"] = conn
    # context trailer: ", client: 1.2.3.4, server: x, request: "...", upstream: "...", host: "...""
    cut = body.find(", client: ")
    message = body if cut < 0 else body[:cut]
    if cut >= 0:
        _context(body[cut + 2 :], fields)
        if '"' in message:
            # nginx quotes the outside text it puts in a message (an open() path from the decoded
            # URI, a header a client or a replica sent): the ", client: " found may be inside it,
            # followed by a whole forged context. Such a line names no replica.
            fields.pop("upstream", None)
    if not attributable:
        fields.pop("upstream", None)
    elif "upstream" in fields:
        fields["upstream_addr"] = upstream_host_port(fields["upstream"])
    errno = message.find(" (")
    if errno >= 0:
        code = message[errno + 2 : message.find(":", errno, errno + 8)]
        if code.isdigit():
            fields["errno"] = code
    return Parsed(KIND, message, _NGINX_LEVELS.get(level, ""), ts, fields)


def _context(trailer: str, fields: dict[str, str]) -> None:
    """The context nginx appends to an error line, read in the one order nginx writes it.

    ``ngx_http_log_error`` / ``ngx_http_log_error_handler`` (src/http/ngx_http_request.c) write
    ``client: <addr>, server: <name>, request: "<line>"[, subrequest: "<uri>"][, upstream:
    "<schema><peer><uri>"][, host: "<Host>"][, referrer: "<Referer>"]``, unescaped. The Host and
    Referer headers come *after* the upstream and are the client's own text: a Referer holding
    ``", upstream: "http://<other replica>/`` must not name the replica. So each key is taken
    at most once and only in nginx's order (a key that goes backwards ends the trailer), and a
    quoted value ends only where nginx's next key begins: ``upstream`` is the one nginx wrote.
    """
    pos = 0
    size = len(trailer)
    rank = -1
    http09 = False
    while pos < size:
        colon = trailer.find(": ", pos)
        if colon < 0:
            return
        key = trailer[pos:colon]
        if key not in _CONTEXT_RANK or _CONTEXT_RANK[key] <= rank:
            return
        rank = _CONTEXT_RANK[key]
        start = colon + 2
        if key in _QUOTED:
            if not trailer.startswith('"', start):
                return
            end = _quoted_end(trailer, start + 1, rank)
            value = trailer[start + 1 : end]
            if not _nginx_wrote(key, value, http09):
                if key == "host":  # the upstream before it was read across a forged boundary
                    fields.pop("upstream", None)
                return
            if key == "request":
                http09 = " HTTP/" not in value
            fields[key] = value
            pos = end + 1
        else:
            end = trailer.find(", ", start)
            if end < 0:
                end = size
            fields[key] = trailer[start:end]
            pos = end
        if trailer.startswith(", ", pos):
            pos += 2
        else:
            return


def _nginx_wrote(key: str, value: str, http09: bool) -> bool:
    """Whether ``value`` has the shape nginx gives ``key`` (see :data:`_REQUEST_LINE`); the Referer
    (last, free text) always has."""
    if key == "request":
        return _REQUEST_LINE.fullmatch(value) is not None
    if key in ("upstream", "host"):
        return _SPACELESS.fullmatch(value) is not None and not (key == "host" and http09)
    return not (key == "referrer" and http09)


def _quoted_end(trailer: str, start: int, rank: int) -> int:
    """Where a quoted value that may itself hold quotes (a request line, a Referer) ends: at the
    first ``", <key>: "`` of a key nginx writes later, else at the line's last quote."""
    ends = [at for later in _CONTEXT_ORDER[rank + 1 :] if (at := trailer.find(f'", {later}: ', start)) >= 0]
    if ends:
        return min(ends)
    last = trailer.rfind('"', start)
    return last if last >= 0 else len(trailer)


# ----------------------------------------------------------------------------- access log

COMBINED = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"'
)
"""Nginx's predefined ``combined`` format."""

UPSTREAM = COMBINED + " $upstream_addr $upstream_status $request_time"
"""The default: ``combined`` plus who answered, with what, and how long the request took."""

_LIST_VARS = frozenset(
    {
        "upstream_addr",
        "upstream_status",
        "upstream_response_time",
        "upstream_connect_time",
        "upstream_header_time",
        "upstream_bytes_received",
        "upstream_bytes_sent",
        "upstream_response_length",
    }
)
_NUMERIC_VARS = frozenset({"status", "body_bytes_sent", "bytes_sent", "request_length", "request_time"})
_NO_SPACE_VARS = frozenset({"remote_addr", "the_real_ip", "host", "req_id"})
_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]{1,64})\}|([A-Za-z0-9_]{1,64}))")


@dataclass(frozen=True, slots=True)
class AccessLogFormat:
    """A ``log_format`` string compiled to ``(literal, variable)`` steps for a linear tokenizer."""

    source: str
    prefix: str
    steps: tuple[tuple[str, str], ...]  # (variable, literal that follows it; "" = end of line)

    @classmethod
    def compile(cls, log_format: str) -> AccessLogFormat:
        """Compile nginx ``log_format`` text; adjacent variables are refused (nothing separates them)."""
        tokens: list[str] = []
        literals: list[str] = []
        pos = 0
        for m in _VAR.finditer(log_format):
            literals.append(log_format[pos : m.start()])
            tokens.append(m.group(1) or m.group(2))
            pos = m.end()
        trailing = log_format[pos:]
        if not tokens:
            raise ValueError("log_format has no variables")
        for n, lit in enumerate(literals[1:], 1):
            if not lit:
                raise ValueError(f"variables ${tokens[n - 1]} and ${tokens[n]} are adjacent: cannot split them")
        followers = [*literals[1:], trailing]
        return cls(log_format, literals[0], tuple(zip(tokens, followers, strict=True)))

    def parse(self, line: str) -> dict[str, str] | None:
        """Variables of one line, or ``None`` if the line does not fit the format."""
        if not line.startswith(self.prefix):
            return None
        pos = len(self.prefix)
        values: dict[str, str] = {}
        last = len(self.steps) - 1
        for n, (name, literal) in enumerate(self.steps):
            if not literal:
                if n != last:
                    return None
                end = len(line)
            else:
                end = line.find(literal, pos)
                if name in _LIST_VARS:
                    # "10.0.0.1:8501, 10.0.0.2:8501" and "a : b" (internal redirect) contain spaces
                    while end >= 0 and (line[end - 1 : end] == "," or line.startswith(" : ", end)):
                        end = line.find(literal, end + (3 if line.startswith(" : ", end) else 1))
                if end < 0:
                    return None
            value = line[pos:end]
            if not _plausible(name, value):
                return None
            values[name] = value
            pos = end + len(literal)
        if pos != len(line) and self.steps[-1][1]:
            return None
        return values


MAIN = COMBINED + ' "$http_x_forwarded_for"'
"""The ``main`` format of the official nginx Docker image's ``nginx.conf``."""


def _plausible(name: str, value: str) -> bool:
    """Typed variables must look like their type: this is what rejects a line of another format."""
    if name in _NUMERIC_VARS:
        return value == "-" or value.replace(".", "", 1).isdigit()
    if name in _LIST_VARS:
        return '"' not in value and "[" not in value
    if name in _NO_SPACE_VARS:
        return bool(value) and " " not in value and '"' not in value
    return True


INGRESS_UPSTREAMINFO = (
    COMBINED + " $request_length $request_time [$proxy_upstream_name] [$proxy_alternative_upstream_name]"
    " $upstream_addr $upstream_response_length $upstream_response_time $upstream_status $req_id"
)
"""ingress-nginx's default ``upstreaminfo`` (internal/ingress/controller/config/config.go logFormatUpstream)."""

INGRESS_UPSTREAMINFO_OLD = (
    '$the_real_ip - [$the_real_ip] - $remote_user [$time_local] "$request" $status $body_bytes_sent'
    ' "$http_referer" "$http_user_agent" $request_length $request_time [$proxy_upstream_name]'
    " $upstream_addr $upstream_response_length $upstream_response_time $upstream_status $req_id"
)
"""ingress-nginx before 0.22 (kubernetes/ingress-nginx#3610 pastes a line of it)."""

VHOST = (
    '$host $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer"'
    ' "$http_user_agent"'
)
"""nginx-proxy's ``vhost`` format (the virtual host first); newer releases append ``"$upstream_addr"``."""

DEFAULT_FORMAT = AccessLogFormat.compile(UPSTREAM)
_FALLBACK_FORMATS = (
    DEFAULT_FORMAT,
    AccessLogFormat.compile(MAIN),
    AccessLogFormat.compile(COMBINED),
    AccessLogFormat.compile(INGRESS_UPSTREAMINFO),
    AccessLogFormat.compile(INGRESS_UPSTREAMINFO_OLD),
    AccessLogFormat.compile(VHOST),
    AccessLogFormat.compile(VHOST + ' "$upstream_addr"'),
)


def _time_local(text: str) -> float | None:
    # 01/May/2024:10:00:00 +0000
    if len(text) != 26 or text[2] != "/" or text[6] != "/" or text[11] != ":":
        return None
    month = MONTHS.get(text[3:6].lower())
    parts = (text[0:2], text[7:11], text[12:14], text[15:17], text[18:20], text[22:26])
    if month is None or not all(p.isdigit() for p in parts):
        return None
    base = epoch(int(parts[1]), month, int(parts[0]), int(parts[2]), int(parts[3]), int(parts[4]))
    if base is None:
        return None
    sign = -1 if text[21] == "-" else 1
    return base - sign * (int(parts[5][:2]) * 3600 + int(parts[5][2:]) * 60)


def parse_access(line: str, fmt: AccessLogFormat | None = None) -> Parsed | None:
    """Parse an access-log line with ``fmt`` (default: :data:`UPSTREAM`, then ``main``, ``combined``)."""
    formats = (fmt,) if fmt is not None else _FALLBACK_FORMATS
    values = None
    for candidate in formats:
        values = candidate.parse(line)
        if values is not None:
            break
    if values is None:
        return None
    fields = {k: v for k, v in values.items() if v != "-" or k in ("remote_user",)}
    for var, plural in (("upstream_addr", "upstream_addrs"), ("upstream_status", "upstream_statuses")):
        full = values.get(var)
        if full and full != "-":
            fields[plural] = full
            fields[var] = full.replace(" : ", ", ").rsplit(", ", 1)[-1].strip()
    request = values.get("request", "")
    method, _, rest = request.partition(" ")
    if rest:
        fields["method"] = method
        fields["path"] = rest.rsplit(" ", 1)[0]
    status = values.get("status", "")
    level = "info"
    if status.isdigit():
        level = "error" if status >= "500" else "warning" if status >= "400" else "info"
    ts = _time_local(values["time_local"]) if "time_local" in values else None
    return Parsed(KIND, _without_client_headers(line, values), level, ts, fields)


_CLIENT_HEADERS = ("http_referer", "http_user_agent", "http_x_forwarded_for", "remote_user")


def _without_client_headers(line: str, values: dict[str, str]) -> str:
    """The line with the headers a client writes freely blanked to ``-``: the engine matches a
    load balancer's line about a replica against this text only, so a Referer reading
    ``upstream server temporarily disabled`` is not the load balancer saying so."""
    message = line
    for name in _CLIENT_HEADERS:
        value = values.get(name, "")
        if value and value != "-":
            message = message.replace(f'"{value}"', '"-"', 1) if f'"{value}"' in message else message
    return message


def parse(line: str, fmt: AccessLogFormat | None = None) -> Parsed | None:
    """Error-log line or access-log line, whichever fits."""
    if (line[:1].isdigit() and line[4:5] == "/") or line[:1] == "[":
        parsed = parse_error(line)
        if parsed is not None:
            return parsed
    return parse_access(line, fmt) or _parse_headerless(line)
