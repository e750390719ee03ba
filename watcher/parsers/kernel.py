"""Kernel OOM-killer lines (``dmesg``, ``journalctl -k``, syslog), wherever their prefix ends.

A container killed by its memory cgroup exits 137 and Docker may report ``oom``; the kernel line
says which process died and how big it was, and ``oom-kill:`` names the cgroup, hence the
container id. Prefixes vary (``[  518.05] ``, ``May 15 23:09:30 host kernel: ``, ``[Thu Dec  7
00:05:15 2017] ``), so the markers are found with ``str.find`` rather than anchored.
"""

from __future__ import annotations

import re

from watcher.parsers.base import Parsed

KIND = "kernel"

_MARKERS = (
    "Memory cgroup out of memory: ",
    "Out of memory: ",
    "oom-kill:",
    "invoked oom-killer:",
    "Killed process ",
    "oom_reaper: reaped process ",
)
_KILLED = re.compile(r"(?:Killed|Kill|reaped) process (\d{1,10}) \(([^)]{0,64})\)")
_SIZES = re.compile(r"(total-vm|anon-rss|file-rss|shmem-rss):(\d{1,20})kB")
_CONTAINER = re.compile(r"(?:docker[-/]|cri-containerd-)([0-9a-f]{64})")


def parse(line: str) -> Parsed | None:
    """Parse a kernel OOM line; ``None`` if the line carries none of the OOM markers."""
    at = -1
    for marker in _MARKERS:
        at = line.find(marker)
        if at >= 0:
            break
    if at < 0:
        return None
    message = line[at:]
    fields: dict[str, str] = {}
    m = _KILLED.search(message, 0, 512)
    if m is not None:
        fields["pid"], fields["process"] = m.group(1), m.group(2)
    for key, value in _SIZES.findall(message[:1024]):
        fields[key.replace("-", "_")] = value
    if message.startswith("oom-kill:"):
        for item in message[len("oom-kill:") :].split(","):
            key, eq, value = item.partition("=")
            if eq and key in ("constraint", "task_memcg", "oom_memcg", "task", "pid", "uid", "cpuset"):
                fields[key] = value.strip()
        if "task" in fields:
            fields["process"] = fields["task"]
    c = _CONTAINER.search(message)
    if c is not None:
        fields["container_id"] = c.group(1)
    if "Memory cgroup" in message or fields.get("constraint") == "CONSTRAINT_MEMCG":
        fields["scope"] = "cgroup"
    level = "warning" if "invoked oom-killer" in message or message.startswith("oom_reaper") else "error"
    return Parsed(KIND, message, level, None, fields)
