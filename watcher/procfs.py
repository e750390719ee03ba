"""The few facts about host processes the watcher reads from ``/proc`` (Linux; no psutil).

Used to follow a host Nginx master's workers across a reload (:mod:`watcher.actions.nginx`) and
by the testbed to stop what it spawned. A process can exit between listing ``/proc`` and reading
its files, so every reader treats a vanished process as absent rather than as an error.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["alive", "children", "cmdline"]

_PROC = Path("/proc")


def _stat_fields(stat: str) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces and ``)``):
    ``[state, ppid, ...]``."""
    return stat.rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` that have not exited (zombies are left out: they hold nothing)."""
    out: list[int] = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields((entry / "stat").read_text())
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (exited, waiting to be reaped)."""
    try:
        return _stat_fields((_PROC / str(pid) / "stat").read_text())[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline(pid: int) -> str | None:
    """The process's command line, arguments joined by spaces (as its title: Nginx retitles its
    workers ``nginx: worker process is shutting down``); None when it has gone."""
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
