"""The watcher's memory across restarts: one SQLite file in WAL mode.

What must survive a restart lives here and nowhere else: log cursors (so a restart neither loses
nor repeats a line), rule and detector state (so pending timers and learned baselines carry on),
and later the action journal and incidents. WAL mode lets the API read while the engine writes.
Every method is one short transaction; the connection is shared behind a lock because sources,
engine and API run in different threads.

One writer per store. The watcher opens its store with ``writer=True``, which takes an OS lock
(``flock``) on ``<store>.lock`` for the life of the process: a second watcher on the same store
refuses to start (:class:`StoreLocked`) instead of acting twice on every line and overwriting the
guard rails. The kernel drops the lock when the process dies, so a SIGKILLed watcher never blocks
its successor. Readers (``watcher incidents``) take no lock; WAL lets them read beside the writer.
A reader opens with ``read_only=True``: it never creates the file, its directory or the schema, and
a missing store is :class:`StoreMissing` (a read-only command must not leave an empty store behind
for the next ``watcher run`` to mistake for its own).

A corrupt store is moved aside (``<store>.corrupt-<UTC timestamp>``) and a fresh one started; the
service sends a critical alert naming what was lost and starts with actions paused. Why not refuse:
under ``restart: unless-stopped`` a refusal is a crash loop in which nothing is watched until a
human deletes a file, while what a fresh store loses can be named and made safe. What is lost:
guard-rail history (cooldowns, restart budgets, open breakers, silences, pause), log cursors (logs
are re-read from the backfill window; stale findings are refused as old), rule and detector state,
and open incidents (a replica an incident had drained stays drained until a human restores it).
Pausing covers the guard rails that were lost; the alert names the file kept for forensics.
A store that cannot be opened for writing (read-only file or volume) or is locked by another
process refuses with one line: those are fixed by a human, and guessing would lose data.

Write errors while running (disk full, the volume gone read-only) raise :class:`StoreWriteError`
and are counted (:attr:`Store.write_errors`, shown in /readyz and /metrics). Callers that only
checkpoint (cursors, engine state) keep going and retry at the next checkpoint; the executor refuses
an action it cannot journal. The next write that succeeds clears :attr:`Store.write_ok`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    scope TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, target TEXT NOT NULL, rule_id TEXT NOT NULL,
    predicts TEXT NOT NULL, resolved INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_target ON findings (target, ts);
"""


class StoreError(RuntimeError):
    """The store file cannot be opened or written; the message names the file."""


class StoreLocked(StoreError):
    """Another watcher (or another process) holds the store."""


class StoreUnwritable(StoreError):
    """The store or its directory is read-only, or cannot be opened at all."""


class StoreMissing(StoreError):
    """A reader asked for a store that does not exist (nothing was created)."""


class StoreCorrupt(StoreError):
    """The file is not a database, or SQLite's integrity check fails."""


class StoreWriteError(StoreError):
    """A write failed while running (disk full, read-only volume): counted, retried by the caller."""


_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_LOCKED = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


def _code(exc: sqlite3.Error) -> int:
    """The primary result code (``sqlite_errorcode`` is the extended one, e.g. SQLITE_READONLY_DBMOVED)."""
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


class Store:
    def __init__(self, path: str | Path, writer: bool = False, read_only: bool = False) -> None:
        """``writer``: the watcher's own store, one per store (see the module docstring).
        ``read_only``: a reader that creates nothing (no file, directory, schema or lock)."""
        self.path = str(path)
        self.read_only = read_only and not writer
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self.replaced: str | None = None  # where a corrupt store was moved when this one replaced it
        self.write_errors = 0
        self.write_ok = True  # the latest write succeeded
        self.last_write_error = ""
        if self.read_only:
            self._db = self._open_read_only()
            return
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnwritable(f"cannot create the store's directory for {self.path}: {exc}") from None
        if writer and self.path != ":memory:":
            self._take_lock()
        try:
            self._db = self._open(writer)
        except StoreCorrupt:
            if not writer:
                raise
            self.replaced = self._move_aside()
            self._db = self._open(writer)

    # -- opening ---------------------------------------------------------------------------
    def _take_lock(self) -> None:
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreUnwritable(f"store {self.path} is not writable: cannot create {lock_path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"store {self.path} is in use by another watcher (pid {holder}); one watcher per store"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open_read_only(self) -> sqlite3.Connection:
        """SQLite's ``mode=ro``: the file must exist and is never written (WAL still lets it read beside
        a running writer). With no WAL file beside it no writer has it open, and ``immutable`` keeps
        SQLite from creating ``-wal``/``-shm`` files just to read (it would, in a writable directory)."""
        if not Path(self.path).is_file():
            raise StoreMissing(f"no store at {self.path}")
        uri = f"{Path(self.path).absolute().as_uri()}?mode=ro"
        if not Path(f"{self.path}-wal").exists():
            uri += "&immutable=1"
        try:
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreUnwritable(f"store {self.path} cannot be opened for reading: {exc}") from None
        try:
            db.execute("PRAGMA busy_timeout=5000")
            tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            db.close()
            if _code(exc) in _CORRUPT:
                raise StoreCorrupt(f"store {self.path} is corrupt: {exc}") from None
            raise StoreUnwritable(f"store {self.path} cannot be read: {exc}") from None
        if "meta" not in tables:
            db.close()
            raise StoreCorrupt(f"{self.path} is not a watcher store (no meta table)")
        return db

    def _open(self, writer: bool) -> sqlite3.Connection:
        """Connect, check integrity, create the schema and (a writer) prove it can write; classify what fails."""
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise StoreCorrupt(f"store {self.path} is corrupt: {check[0] if check else 'no answer'}")
            db.executescript(_SCHEMA)
            if writer:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened', ?)", (str(time.time()),))
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            code = _code(exc)
            if code in _CORRUPT:
                raise StoreCorrupt(f"store {self.path} is corrupt: {exc}") from None
            if code in _LOCKED:
                raise StoreLocked(f"store {self.path} is locked by another process: {exc}") from None
            if code == sqlite3.SQLITE_FULL:
                raise StoreUnwritable(f"store {self.path} cannot be opened: the disk is full") from None
            raise StoreUnwritable(f"store {self.path} cannot be opened for writing: {exc}") from None
        except StoreCorrupt:
            if db is not None:
                db.close()
            raise
        return db

    def _move_aside(self) -> str:
        """Rename the corrupt file (and its WAL and shared-memory files) out of the way, for forensics."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = f"{self.path}.corrupt-{stamp}"
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
        except OSError as exc:
            raise StoreUnwritable(f"store {self.path} is corrupt and cannot be moved aside: {exc}") from None
        return aside

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a SQLite error (disk full, read-only) becomes a counted StoreWriteError."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                self.write_errors += 1
                self.write_ok = False
                self.last_write_error = str(exc)
                raise StoreWriteError(f"store {self.path} not writable: {exc}") from exc
            self.write_ok = True

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Reads take no write lock, so they still answer when the disk is full or read-only."""
        with self._lock:
            yield self._db

    def migrate(self, script: str) -> None:
        """Create the tables a component owns (idempotent ``CREATE ... IF NOT EXISTS`` script); a
        read-only store creates nothing (reading a table the writer never made is an error then)."""
        if self.read_only:
            return
        with self._lock:
            self._db.executescript(script)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the one-writer lock
                self._lock_fd = None

    def writable(self) -> bool:
        """For /readyz: can we still commit?"""
        try:
            with self.transaction() as db:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', '1')")
        except StoreError:
            return False
        return True

    def health(self) -> dict[str, Any]:
        """What /readyz and /metrics say about the store."""
        return {
            "write_ok": self.write_ok,
            "write_errors": self.write_errors,
            "last_write_error": self.last_write_error,
            "replaced_corrupt": self.replaced,
        }

    # -- cursors ---------------------------------------------------------------------------
    def get_cursor(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM cursors WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_cursor(self, key: str, value: str, now: float = 0.0) -> None:
        self.set_cursors({key: value}, now)

    def set_cursors(self, cursors: dict[str, str], now: float = 0.0) -> None:
        """Commit several cursors in one transaction (one per processed batch)."""
        if not cursors:
            return
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO cursors (key, value, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                [(k, v, now) for k, v in cursors.items()],
            )

    # -- opaque state (rule state table, detector checkpoints) -------------------------------
    def put_state(self, scope: str, key: str, value: Any, now: float = 0.0) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO state (scope, key, value, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (scope, key, json.dumps(value, separators=(",", ":")), now),
            )

    def get_state(self, scope: str, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE scope = ? AND key = ?", (scope, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def state_items(self, scope: str) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM state WHERE scope = ?", (scope,)).fetchall()
        return {str(k): json.loads(v) for k, v in rows}

    # -- findings log ----------------------------------------------------------------------
    def record_finding(self, ts: float, target: str, rule_id: str, predicts: str, resolved: bool, body: Any) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO findings (ts, target, rule_id, predicts, resolved, body) VALUES (?, ?, ?, ?, ?, ?)",
                (ts, target, rule_id, predicts, int(resolved), json.dumps(body, separators=(",", ":"))),
            )

    def findings(self, target: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = "SELECT ts, target, rule_id, predicts, resolved, body FROM findings"
        args: tuple[Any, ...] = ()
        if target is not None:
            query += " WHERE target = ?"
            args = (target,)
        query += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [
            {"ts": r[0], "target": r[1], "rule_id": r[2], "predicts": r[3], "resolved": bool(r[4]), **json.loads(r[5])}
            for r in reversed(rows)
        ]
