"""Shift traffic in open-source Nginx: rewrite the upstream file, ``nginx -t``, HUP, confirm.

Open-source Nginx has no runtime API for weights, so a drain is a config change: the server line
of the replica gets ``down`` (Nginx refuses ``weight=0``), the file is validated with ``nginx -t``
for a host process (a refused file is put back byte for byte and nothing is signalled; Nginx in a
container is validated by its master on HUP instead, see :class:`ContainerNginxReload`), the master
is sent SIGHUP and the change counts as applied only once it is *confirmed live*.

Confirmation without a status API. After a HUP the master re-reads the config, forks new workers
with it and asks the old ones to shut down gracefully; an old worker first retitles itself
``nginx: worker process is shutting down`` and closes its listening sockets, then finishes the
requests it holds and exits. So the new config is live exactly when at least one worker that did
not exist before the HUP is accepting and no pre-HUP worker is still accepting. For a host
process the worker list comes from ``/proc`` (children of the master from the PID file); for Nginx
in a container it comes from ``docker top`` (the engine runs ``ps`` on the host, so the image
needs no procps).

A refused reload. If the master rejects the config at reload time (an included file someone broke,
something ``nginx -t`` could not see, or Nginx in a container where there is no ``nginx -t``), it
logs ``[emerg] ...`` and keeps its old workers. The shifter notices either way: the ``[emerg]``
line appears in the master's error output after the HUP (the error-log file of a host process, the
container's log), or no new worker generation appears within ``reload_timeout_s``. It then puts
the upstream file back to the content Nginx last accepted and raises :class:`NginxReloadRefused`
(a :class:`~watcher.actions.base.ChangeRefused`, carrying the ``[emerg]`` line, redacted and
bounded), so the executor holds the incident instead of restarting a replica it could not drain.
"The content Nginx last accepted" is what the shifter recorded at its last confirmed reload
(kept beside the file, so it survives a watcher restart) while the worker generation it confirmed
is still the live one; when the workers changed since (someone else reloaded or restarted Nginx),
it is the file as it was before this change.

In-flight requests. Open-source Nginx exposes no per-upstream in-flight count (``stub_status`` is
global). But once the replica is ``down`` in the live config, new workers never pick it, so every
request still in flight to it lives in an old worker, and an old worker exits only when its last
request is done. ``wait_idle`` therefore waits until no worker is "shutting down" (conservative:
it also waits for old requests to other replicas; Nginx's ``worker_shutdown_timeout`` bounds it),
and, when given the access log, until no line naming the replica's address has been written for
``quiet_s`` (lines are written when a request completes, so this catches stragglers the worker
check cannot attribute). The wait is bounded by the caller's timeout.

Original weights live in the file itself: a changed line carries ``[watcher-original: weight=3]``
in its comment, so ``original_weight`` survives a watcher restart and restoring the original
weight puts the line back exactly as the operator wrote it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from watcher import procfs
from watcher.actions.base import ActionError, ChangeRefused, Replica, TrafficShifter
from watcher.fileutil import atomic_write
from watcher.redact import redact_text

__all__ = [
    "ContainerNginxReload",
    "HostNginxReload",
    "NginxConfigRefused",
    "NginxReload",
    "NginxReloadRefused",
    "NginxShifter",
    "ServerLine",
    "UpstreamFile",
]

_MARKER_RE = re.compile(r"\s*\[watcher-original:([^\]]*)\]")
_UPSTREAM_RE = re.compile(r"^\s*upstream\s+(\S+)\s*\{")
_SERVER_RE = re.compile(r"^\s*server\s+(\S+)")
_WEIGHT_RE = re.compile(r"(?<=\s)weight=(\d+)(?=\s|$)")
_DOWN_RE = re.compile(r"(?<=\s)down(?=\s|$)")
MAX_REASON_CHARS = 300  # an [emerg] line quoted in an error, a journal note or an alert
_LOG_READ_MAX = 1 << 20  # how much error output after a HUP is searched for the [emerg] line


# ----------------------------------------------------------------------------- the upstream file


@dataclass(frozen=True, slots=True)
class ServerLine:
    """One ``server`` directive inside an ``upstream`` block, as found in the file."""

    index: int  # line number (0-based)
    upstream: str  # name of the enclosing upstream block
    address: str
    weight_token: int | None  # explicit weight=N, None when absent (Nginx's default is 1)
    down: bool
    original: tuple[int | None, bool] | None  # (weight_token, down) before the watcher, if changed

    @property
    def weight(self) -> int:
        """Effective weight: 0 when ``down``."""
        return 0 if self.down else (self.weight_token or 1)

    @property
    def original_weight(self) -> int:
        if self.original is None:
            return self.weight
        token, down = self.original
        return 0 if down else (token or 1)


def _split(line: str) -> tuple[str, str]:
    """Split a directive line into the directive (up to ``;``) and the rest (``;`` + comment)."""
    head, sep, tail = line.partition(";")
    if not sep:
        raise ValueError(f"server directive without ';' on one line: {line.strip()!r}")
    return head, sep + tail


def _tokens_state(head: str) -> tuple[int | None, bool]:
    m = _WEIGHT_RE.search(head)
    return (int(m.group(1)) if m else None), bool(_DOWN_RE.search(head))


def _format_marker(state: tuple[int | None, bool]) -> str:
    token, down = state
    parts = ([f"weight={token}"] if token is not None else []) + (["down"] if down else [])
    return f"[watcher-original: {' '.join(parts) or '-'}]"


def _parse_marker(text: str) -> tuple[int | None, bool]:
    token: int | None = None
    down = False
    for part in text.split():
        if part.startswith("weight=") and part[7:].isdigit():
            token = int(part[7:])
        elif part == "down":
            down = True
    return token, down


class UpstreamFile:
    """A parsed upstream file that can change one server's weight and render itself back.

    Only ``server`` lines inside ``upstream`` blocks are interpreted, one directive per line (how
    generated and hand-written upstream files look); every other line is kept verbatim.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines(keepends=True)
        self.servers = self._parse()

    def _parse(self) -> list[ServerLine]:
        out: list[ServerLine] = []
        block: str | None = None
        depth = 0
        for i, raw in enumerate(self.lines):
            code = raw.split("#", 1)[0]
            m = _UPSTREAM_RE.match(code)
            if block is None and m:
                block, depth = m.group(1), 0
            if block is not None:
                sm = _SERVER_RE.match(code)
                if sm and depth == 1:
                    try:
                        head, tail = _split(raw.rstrip("\r\n"))
                    except ValueError as exc:
                        raise ActionError(f"cannot parse upstream file line {i + 1}: {exc}") from None
                    marker = _MARKER_RE.search(tail)
                    token, down = _tokens_state(head)
                    out.append(
                        ServerLine(
                            index=i,
                            upstream=block,
                            address=sm.group(1),
                            weight_token=token,
                            down=down,
                            original=_parse_marker(marker.group(1)) if marker else None,
                        )
                    )
                depth += code.count("{") - code.count("}")
                if depth <= 0 and "}" in code:
                    block = None
        return out

    def find(self, address: str, upstream: str | None = None) -> list[ServerLine]:
        return [s for s in self.servers if s.address == address and (upstream is None or s.upstream == upstream)]

    def set_weight(self, server: ServerLine, weight: int) -> None:
        """Rewrite ``server``'s line for ``weight`` (0 = ``down``), keeping its original in the comment."""
        if weight < 0:
            raise ActionError(f"weight must be >= 0, got {weight}")
        raw = self.lines[server.index]
        ending = raw[len(raw.rstrip("\r\n")) :]
        head, tail = _split(raw.rstrip("\r\n"))
        original = server.original or (server.weight_token, server.down)
        tail = _MARKER_RE.sub("", tail)
        if weight == server.original_weight:
            head = self._with_state(head, original)
        else:
            token = server.weight_token if weight == 0 else weight
            head = self._with_state(head, (token, weight == 0))
            tail = self._with_marker(tail, _format_marker(original))
        tail = re.sub(r"\s*#\s*$", "", tail)  # a comment that only held our marker
        self.lines[server.index] = head + tail + ending
        self.servers = self._parse()

    @staticmethod
    def _with_state(head: str, state: tuple[int | None, bool]) -> str:
        token, down = state
        if token is None:
            head = re.sub(r"\s+weight=\d+(?=\s|$)", "", head)
        elif _WEIGHT_RE.search(head):
            head = _WEIGHT_RE.sub(f"weight={token}", head)
        else:
            head = _SERVER_RE.sub(lambda m: f"{m.group(0)} weight={token}", head, count=1)
        has_down = bool(_DOWN_RE.search(head))
        if down and not has_down:
            head = head.rstrip() + " down"
        elif not down and has_down:
            head = re.sub(r"\s+down(?=\s|$)", "", head)
        return head

    @staticmethod
    def _with_marker(tail: str, marker: str) -> str:
        if "#" in tail:
            return tail.rstrip() + " " + marker
        return tail.rstrip() + "  # " + marker

    def render(self) -> str:
        return "".join(self.lines)


# ------------------------------------------------------------------------------------- reloaders


def refusal_line(output: str) -> str | None:
    """Why Nginx refused a config, from its error output: the last ``[emerg]`` line, from the level on
    (no timestamp), control characters replaced, URLs and secrets redacted, at most
    :data:`MAX_REASON_CHARS`. None when there is none. The line quotes config text (directive
    names, paths, sometimes values), so it is treated as untrusted text on its way to an alert."""
    found: str | None = None
    for line in output.splitlines():
        at = line.find("[emerg]")
        if at >= 0:
            found = line[at:]
    if found is None:
        return None
    clean = redact_text("".join(c if c.isprintable() else "?" for c in found.strip()))
    return clean if len(clean) <= MAX_REASON_CHARS else clean[: MAX_REASON_CHARS - 3] + "..."


class NginxConfigRefused(ChangeRefused):
    """``nginx -t`` refused the file (nothing was signalled); ``reason`` is Nginx's ``[emerg]`` line."""


class NginxReloadRefused(ChangeRefused):
    """The master refused the config on SIGHUP and kept its old workers; the file was put back to
    what Nginx last accepted. ``reason`` is the ``[emerg]`` line when the error output was readable."""


class NginxReload(Protocol):
    """How to validate, signal and observe one Nginx master (host process or container)."""

    def test(self) -> None:
        """Run ``nginx -t``; raise :class:`NginxConfigRefused` carrying Nginx's own message on failure."""

    def workers(self) -> dict[int, bool]:
        """Worker PIDs of the master, each with whether it still accepts (not shutting down)."""

    def signal_reload(self) -> None:
        """Send SIGHUP to the master."""

    def log_mark(self) -> float:
        """Where the master's error output ends now (taken just before a HUP): a byte offset in
        its error-log file, or a unix time for a container's log."""

    def refusal(self, mark: float) -> str | None:
        """The ``[emerg]`` line the master wrote after ``mark`` (see :func:`refusal_line`); None
        when there is none or its error output cannot be read."""


class HostNginxReload:
    """An Nginx master running as a host process, found through its PID file (or a PID).

    ``args`` are what the master was started with (``-p prefix/ -c nginx.conf``) so ``nginx -t``
    checks the same files; the PID file is read at every use because a binary upgrade changes it.
    """

    def __init__(
        self,
        *,
        pid_file: Path | None = None,
        pid: int | None = None,
        nginx: str = "nginx",
        args: tuple[str, ...] = (),
        test_timeout_s: float = 15.0,
        error_log: Path | None = None,
    ) -> None:
        if (pid_file is None) == (pid is None):
            raise ValueError("give exactly one of pid_file or pid")
        self.pid_file = pid_file
        self.pid = pid
        self.nginx = nginx
        self.args = args
        self.test_timeout_s = test_timeout_s
        self.error_log = error_log  # the master's error_log file: a refused reload is seen at once

    def master_pid(self) -> int:
        if self.pid is not None:
            return self.pid
        assert self.pid_file is not None
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise ActionError(f"nginx master PID unreadable from {self.pid_file}: {exc}") from None

    def test(self) -> None:
        try:
            proc = subprocess.run(
                [self.nginx, "-t", *self.args],
                capture_output=True,
                text=True,
                timeout=self.test_timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ActionError(f"nginx -t could not run: {exc}") from None
        if proc.returncode != 0:
            output = proc.stderr + proc.stdout
            reason = refusal_line(output)
            if reason is None:
                text = redact_text(output.strip())
                reason = text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
            raise NginxConfigRefused(f"nginx -t refused the config: {reason}", reason)

    def workers(self) -> dict[int, bool]:
        master = self.master_pid()
        if not procfs.alive(master):
            raise ActionError(f"nginx master PID {master} is not running")
        out: dict[int, bool] = {}
        for child in procfs.children(master):
            title = procfs.cmdline(child)
            if title is not None and "worker process" in title:
                out[child] = "shutting down" not in title
        return out

    def signal_reload(self) -> None:
        pid = self.master_pid()
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            raise ActionError(f"cannot send SIGHUP to nginx master {pid}: {exc}") from None

    def log_mark(self) -> float:
        if self.error_log is None:
            return 0.0
        try:
            return float(self.error_log.stat().st_size)
        except OSError:
            return 0.0

    def refusal(self, mark: float) -> str | None:
        if self.error_log is None:
            return None
        try:
            with open(self.error_log, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                start = int(mark) if size >= mark else 0  # rotated since the mark: read the new file
                fh.seek(max(start, size - _LOG_READ_MAX))
                chunk = fh.read(_LOG_READ_MAX)
        except OSError:
            return None
        return refusal_line(chunk.decode("utf-8", "replace"))


class ContainerNginxReload:
    """Nginx as PID 1 of a container: validated by the master on HUP, workers via ``docker top``.

    No ``nginx -t`` here: running it needs Docker exec, and exec is a root shell in any container
    for whoever can talk to the Docker API (the socket proxy refused to keep it, see
    watcher/guard_proxy.py). It is not needed either: on SIGHUP the master parses the new config
    and, if it refuses it, logs the error and keeps its old workers. No new worker generation
    appears, so :class:`NginxShifter`'s confirmation times out, the previous upstream file is put
    back and an :class:`ActionError` is raised; the live config never changed. ``test`` is
    therefore a no-op.

    The upstream file the shifter rewrites is the host side of a bind mount into the container.
    ``docker top`` lists the container's processes from the host (no ``ps`` needed in the image),
    with host PIDs, which is all the confirmation needs.
    """

    def __init__(self, client: Any, container: str) -> None:
        self.client = client
        self.container = container

    def _container(self) -> Any:
        try:
            return self.client.containers.get(self.container)
        except Exception as exc:  # docker.errors.NotFound / APIError
            raise ActionError(f"nginx container {self.container}: {exc}") from None

    def test(self) -> None:
        """Nothing to run: the master validates on HUP (see the class doc)."""

    def workers(self) -> dict[int, bool]:
        top = self._container().top()
        titles = [str(t).upper() for t in top.get("Titles") or []]
        try:
            pid_col = titles.index("PID")
            cmd_col = titles.index("CMD") if "CMD" in titles else titles.index("COMMAND")
        except ValueError:
            raise ActionError(f"unexpected docker top columns for {self.container}: {titles}") from None
        out: dict[int, bool] = {}
        for row in top.get("Processes") or []:
            cmd = " ".join(str(c) for c in row[cmd_col:])
            if "worker process" in cmd:
                out[int(row[pid_col])] = "shutting down" not in cmd
        return out

    def signal_reload(self) -> None:
        try:
            self._container().kill(signal="HUP")
        except ActionError:
            raise
        except Exception as exc:
            raise ActionError(f"cannot HUP nginx container {self.container}: {exc}") from None

    def log_mark(self) -> float:
        return time.time()

    def refusal(self, mark: float) -> str | None:
        """Nginx in a container logs to stderr: the container's log since the mark (the guard
        proxy allows ``logs`` with ``since`` and ``tail``)."""
        try:
            raw = self._container().logs(stdout=True, stderr=True, since=mark, tail=200)
        except Exception:  # ActionError, docker.errors.APIError, a dropped connection
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return refusal_line(text[-_LOG_READ_MAX:])


# ---------------------------------------------------------------------------------------- shifter


class NginxShifter(TrafficShifter):
    """A :class:`~watcher.actions.base.TrafficShifter` for open-source Nginx (see module doc)."""

    def __init__(
        self,
        upstreams_file: Path,
        reload: NginxReload,
        *,
        upstream: str | None = None,
        access_log: Path | None = None,
        quiet_s: float = 0.5,
        reload_timeout_s: float = 10.0,
        poll_s: float = 0.02,
        refusal_poll_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.upstreams_file = Path(upstreams_file)
        self.reload = reload
        self.upstream = upstream
        self.access_log = access_log
        self.quiet_s = quiet_s
        self.reload_timeout_s = reload_timeout_s
        self.poll_s = poll_s
        self.refusal_poll_s = refusal_poll_s  # how often the error output is read while confirming
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    @property
    def confirms_idle(self) -> bool:
        """``wait_idle`` sees the replica's requests end (access log quiet, old workers gone), so a
        drain needs no blind settle time; without the access log it only sees the workers."""
        return self.access_log is not None

    # -- reading ----------------------------------------------------------------------------
    def _read(self) -> tuple[str, UpstreamFile]:
        try:
            text = self.upstreams_file.read_text()
        except OSError as exc:
            raise ActionError(f"cannot read nginx upstream file {self.upstreams_file}: {exc}") from None
        return text, UpstreamFile(text)

    def _servers(self, parsed: UpstreamFile, replica: Replica) -> list[ServerLine]:
        found = parsed.find(replica.upstream, self.upstream)
        if not found:
            where = f" in upstream {self.upstream}" if self.upstream else ""
            raise ActionError(f"nginx: no server {replica.upstream}{where} in {self.upstreams_file} for {replica}")
        return found

    def get_weight(self, replica: Replica) -> int:
        return self._servers(self._read()[1], replica)[0].weight

    def original_weight(self, replica: Replica) -> int:
        return self._servers(self._read()[1], replica)[0].original_weight

    # -- changing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, across threads and watcher processes sharing the file."""
        lock_path = self.upstreams_file.parent / f".{self.upstreams_file.name}.watcher.lock"
        with self._lock, open(lock_path, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def set_weight(self, replica: Replica, weight: int) -> None:
        if weight < 0:
            raise ActionError(f"nginx: weight must be >= 0, got {weight} for {replica}")
        with self._locked():
            old_text, parsed = self._read()
            servers = self._servers(parsed, replica)
            # Even when the file already says so, reload and confirm: a watcher killed between
            # writing the file and the HUP left a file that is not what Nginx runs.
            for server in servers:
                parsed.set_weight(server, weight)
            self._install(old_text, parsed.render())

    def install(self, text: str) -> None:
        """Make ``text`` the whole upstream file, live: write, ``nginx -t``, HUP, confirm.

        The same path as :meth:`set_weight`, for a caller that renders the file itself (the
        testbed changing its server list). On any failure the previous file is put back byte
        for byte; a file ``nginx -t`` refuses raises :class:`NginxConfigRefused` and nothing is
        signalled.
        """
        with self._locked():
            self._install(self._read()[0], text)

    def _install(self, old_text: str, text: str) -> None:
        atomic_write(self.upstreams_file, text)
        try:
            self.reload.test()
            generation = self._reload_and_confirm()
        except ChangeRefused:
            # Nginx still runs what it last accepted: make the file say so again (see module doc).
            atomic_write(self.upstreams_file, self._last_accepted(fallback=old_text))
            raise
        except BaseException:
            atomic_write(self.upstreams_file, old_text)
            raise
        self._record_accepted(text, generation)

    # -- what Nginx last accepted -------------------------------------------------------------
    @property
    def accepted_record(self) -> Path:
        """Beside the upstream file: the text of the last confirmed reload and the workers it started."""
        return self.upstreams_file.parent / f".{self.upstreams_file.name}.watcher.accepted.json"

    def _record_accepted(self, text: str, workers: set[int]) -> None:
        try:
            atomic_write(self.accepted_record, json.dumps({"text": text, "workers": sorted(workers)}))
        except OSError:
            # No record is safe (a refusal then restores the file as it was before the change); a
            # stale one is too: its workers are gone, so it no longer matches the live generation.
            with contextlib.suppress(OSError):
                self.accepted_record.unlink()

    def _last_accepted(self, fallback: str) -> str:
        """The recorded text while its worker generation is still the one accepting, else ``fallback``."""
        try:
            record = json.loads(self.accepted_record.read_text())
            text, workers = record["text"], {int(pid) for pid in record["workers"]}
            live = {pid for pid, accepting in self.reload.workers().items() if accepting}
        except (OSError, ValueError, KeyError, TypeError, ActionError):
            return fallback
        return text if isinstance(text, str) and workers and live == workers else fallback

    def _reload_and_confirm(self) -> set[int]:
        """HUP and wait for the new generation; returns its workers. A refusal is seen by the
        ``[emerg]`` line in the master's error output, or by no new generation within the bound."""
        before = self.reload.workers()
        if not before:
            raise ActionError("nginx has no worker processes; is it running?")
        mark = self.reload.log_mark()
        self.reload.signal_reload()
        deadline = self._clock() + self.reload_timeout_s
        next_look = self._clock()
        while True:
            now = self.reload.workers()
            accepting = {pid for pid, ok in now.items() if ok}
            if accepting - set(before) and not accepting & set(before):
                return accepting
            if self._clock() >= next_look:
                reason = self.reload.refusal(mark)
                if reason is not None:
                    raise NginxReloadRefused(
                        f"nginx refused the reload: {reason}; it keeps running its previous config and the "
                        "upstream file was put back to it",
                        reason,
                    )
                next_look = self._clock() + self.refusal_poll_s
            if self._clock() > deadline:
                message = (
                    f"nginx did not apply the new upstream config within {self.reload_timeout_s}s after SIGHUP "
                    f"(workers before {sorted(before)}, now {now})"
                )
                if not accepting - set(before):  # no new generation at all: the master refused it
                    reason = self.reload.refusal(mark)
                    said = reason or "no [emerg] line readable, see its error log"
                    raise NginxReloadRefused(
                        f"{message}: the master refused it ({said}); "
                        "the upstream file was put back to what Nginx last accepted",
                        reason,
                    )
                raise ActionError(f"{message}; see its error log. The previous upstream file was restored.")
            self._sleep(self.poll_s)

    # -- waiting ----------------------------------------------------------------------------
    def wait_idle(self, replica: Replica, timeout_s: float) -> bool:
        self._servers(self._read()[1], replica)  # a replica Nginx does not route to is an error, not "idle"
        deadline = self._clock() + timeout_s
        offset = self._log_size()
        last_seen = self._clock()
        needle = replica.upstream.encode()
        while True:
            if self.access_log is not None:
                size = self._log_size()
                if size < offset:
                    offset = 0  # rotated
                if size > offset:
                    with open(self.access_log, "rb") as fh:
                        fh.seek(offset)
                        chunk = fh.read(size - offset)
                    offset = size
                    if needle in chunk:
                        last_seen = self._clock()
                quiet = self._clock() - last_seen >= self.quiet_s
            else:
                quiet = True
            draining = any(not ok for ok in self.reload.workers().values())
            if quiet and not draining:
                return True
            if self._clock() >= deadline:
                return False
            self._sleep(max(self.poll_s, 0.05))

    def _log_size(self) -> int:
        if self.access_log is None:
            return 0
        try:
            return self.access_log.stat().st_size
        except OSError:
            return 0
