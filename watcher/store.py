"""The watcher's memory across restarts: one SQLite file in WAL mode.

What must survive a restart lives here and nowhere else: log cursors (so a restart neither loses
nor repeats a line), rule and detector state (so pending timers and learned baselines carry on),
and later the action journal and incidents. WAL mode lets the API read while the engine writes.
Every method is one short transaction; the connection is shared behind a lock because sources,
engine and API run in different threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
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


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def migrate(self, script: str) -> None:
        """Create the tables a component owns (idempotent ``CREATE ... IF NOT EXISTS`` script)."""
        with self._lock:
            self._db.executescript(script)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def writable(self) -> bool:
        """For /readyz: can we still commit?"""
        try:
            with self.transaction() as db:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', '1')")
        except sqlite3.Error:
            return False
        return True

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
