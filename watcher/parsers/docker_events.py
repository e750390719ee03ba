"""``docker events`` as the CLI prints it, and the mapping to :class:`~watcher.model.Lifecycle`.

``2024-05-01T10:00:00.000000000Z container die 3f2a... (exitCode=137, image=..., name=tfs-1)``.
The action may itself contain ``": "`` (``health_status: unhealthy``, ``exec_start: sh -c ...``);
the id is the last word before the attribute list; attribute values may contain ``", "`` (JSON
in Kubernetes annotations), so a piece without ``=`` is glued back to the previous value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from watcher.parsers.base import Parsed
from watcher.timefmt import parse_iso

if TYPE_CHECKING:
    from watcher.model import LifecycleKind

KIND = "docker_events"
_TYPES = frozenset(
    {"container", "image", "volume", "network", "daemon", "plugin", "service", "node", "secret", "config"}
)
_LIFECYCLE_EVENTS = frozenset({"oom", "die", "start", "restart", "stop", "destroy", "health_status"})


def parse(line: str) -> Parsed | None:
    """Parse one ``docker events`` line; ``None`` if it is not one."""
    stamp, _, rest = line.partition(" ")
    ts = parse_iso(stamp)
    if ts is None:
        return None
    type_, _, rest = rest.partition(" ")
    if type_ not in _TYPES or not rest:
        return None
    attrs_text = ""
    body = rest.rstrip()
    if body.endswith(")"):
        open_ = body.rfind(" (")
        if open_ >= 0:
            attrs_text = body[open_ + 2 : -1]
            body = body[:open_]
    action, _, actor = body.rpartition(" ")
    if not action:
        action, actor = actor, ""
    fields: dict[str, str] = {"type": type_, "action": action, "id": actor}
    last = ""
    for piece in attrs_text.split(", ") if attrs_text else ():
        key, eq, value = piece.partition("=")
        if eq and key and " " not in key:
            fields[key] = value
            last = key
        elif last:
            fields[last] += ", " + piece
    verb, _, health = action.partition(": ")
    fields["event"] = verb
    if health:
        fields["health"] = health.strip()
    if "exitCode" in fields:
        fields["exit_code"] = fields["exitCode"]
    level = "info"
    if verb == "oom" or (verb == "die" and fields.get("exit_code", "0") != "0"):
        level = "error"
    elif verb == "kill" or fields.get("health") == "unhealthy":
        level = "warning"
    return Parsed(KIND, line, level, ts, fields)


def lifecycle_kind(parsed: Parsed) -> LifecycleKind | None:
    """The lifecycle kind a container event stands for, or ``None`` for events the engine ignores."""
    from watcher.model import LifecycleKind

    event = parsed.fields.get("event", "")
    if parsed.fields.get("type") != "container" or event not in _LIFECYCLE_EVENTS:
        return None
    return LifecycleKind(event)
