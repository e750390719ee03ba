"""Follow log files on the host (Nginx or HAProxy running outside Docker, or a mounted log dir).

The cursor is ``<device>:<inode>:<offset>``: after a restart the reader continues at the offset if
the file is still the same inode, and starts the new file from the beginning after a rotation
(copy-truncate is noticed as a size smaller than the offset). Lines are capped at 16 KiB and the
rest of an over-long line is skipped, never buffered.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watcher.model import MAX_LINE_BYTES, LogRecord, Target
from watcher.sources.base import Envelope, SignalQueue, Source
from watcher.store import Store

READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class FileSpec:
    """One host log file and the target its lines are about.

    ``load_balancer``: the file is the load balancer's own log (Nginx access/error log). Only
    such lines may name the replica they are about (``upstream_addr``); a file not marked so is
    evidence about its own target only."""

    path: Path
    target: Target
    load_balancer: bool = False


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


class FileLogsSource(Source):
    name = "file_logs"

    def __init__(
        self,
        queue: SignalQueue,
        store: Store | None,
        files: list[FileSpec],
        poll_s: float = 0.2,
        from_end: bool = False,
    ) -> None:
        super().__init__(queue)
        self.store = store
        self.files = files
        self.poll_s = poll_s
        self.from_end = from_end
        self._threads: list[threading.Thread] = []

    def cursor_key(self, spec: FileSpec) -> str:
        return f"file/{spec.path}"

    def start(self) -> None:
        if not self._claim_start():
            return
        for spec in self.files:
            t = threading.Thread(target=self._follow, args=(spec,), name=f"file:{spec.path.name}", daemon=True)
            t.start()
            self._threads.append(t)
        self.connected = True

    def stop(self) -> None:
        super().stop()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self.connected = False

    def _start_position(self, spec: FileSpec, st: os.stat_result) -> int:
        saved = self.store.get_cursor(self.cursor_key(spec)) if self.store else None
        if saved:
            ident, _, offset = saved.rpartition(":")
            if ident == _identity(st) and int(offset) <= st.st_size:
                return int(offset)
            return 0  # rotated: the new file is read from its beginning
        return st.st_size if self.from_end else 0

    def _follow(self, spec: FileSpec) -> None:
        source_key = f"file:{spec.path}"
        handle = None
        ident = ""
        offset = 0
        pending = b""
        skipping = False
        while not self.stopping:
            try:
                if handle is None:
                    st = os.stat(spec.path)
                    handle = spec.path.open("rb")
                    ident = _identity(os.fstat(handle.fileno()))
                    offset = self._start_position(spec, st)
                    handle.seek(offset)
                    pending, skipping = b"", False
                chunk = handle.read(READ_CHUNK)
                if not chunk:
                    st = os.stat(spec.path)
                    if _identity(st) != ident or st.st_size < offset:
                        handle.close()
                        handle = None  # rotated or truncated: reopen
                        if self.store:
                            self.store.set_cursor(self.cursor_key(spec), f"{_identity(st)}:0")
                        continue
                    time.sleep(self.poll_s)
                    continue
                data = pending + chunk
                start = 0
                while True:
                    nl = data.find(b"\n", start)
                    if nl < 0:
                        break
                    line = data[start:nl]
                    line_end = offset + (nl + 1) - len(pending)
                    if not skipping:
                        self._emit(spec, source_key, line, ident, line_end)
                    skipping = False
                    start = nl + 1
                consumed = len(data) - start
                offset += len(chunk)
                pending = data[start:]
                if len(pending) > MAX_LINE_BYTES:
                    line_end = offset
                    if not skipping:
                        self._emit(spec, source_key, pending[:MAX_LINE_BYTES], ident, line_end, truncated=True)
                    pending, skipping = b"", True
                del consumed
                self.connected = True
            except FileNotFoundError:
                self.connected = False
                self._error(f"{spec.path}: no such file (waiting for it)")
                time.sleep(self.poll_s * 5)
            except OSError as exc:
                self._error(f"{spec.path}: {exc}")
                if handle is not None:
                    handle.close()
                    handle = None
                time.sleep(self.poll_s * 5)
        if handle is not None:
            handle.close()

    def _emit(
        self, spec: FileSpec, source_key: str, raw: bytes, ident: str, end_offset: int, truncated: bool = False
    ) -> None:
        text = raw[:MAX_LINE_BYTES].decode("utf-8", errors="replace").rstrip("\r")
        fields = {"file": str(spec.path)}
        if truncated:
            fields["truncated"] = "1"
        record = LogRecord(target=spec.target, ts=time.time(), message=text, fields=fields)
        self.queue.put(Envelope(record, source_key, (self.cursor_key(spec), f"{ident}:{end_offset}")))

    def status(self) -> dict[str, Any]:
        return {**super().status(), "files": [str(f.path) for f in self.files]}
