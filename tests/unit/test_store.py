"""The store on a bad day: a second watcher, a corrupt file, a read-only volume, a locked database.

Each refusal is one line and a distinct exit status, never a traceback: under
``restart: unless-stopped`` the line is what the operator reads in ``docker logs``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.unit.test_executor import wait_until
from watcher.cli import EXIT_STORE_LOCKED, EXIT_STORE_UNUSABLE
from watcher.journal import Journal
from watcher.policy import Policy
from watcher.store import Store, StoreLocked, StoreUnwritable

ROOT = Path(__file__).resolve().parents[2]


def watcher_run(config: Path) -> subprocess.CompletedProcess[str]:
    """`watcher run` as the container starts it."""
    return subprocess.run(
        [sys.executable, "-m", "watcher.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def config_for(store: Path, where: Path) -> Path:
    config = where / "watcher.yaml"
    config.write_text(f"store: {store}\nengines: {{local: 'tcp://127.0.0.1:9'}}\n")
    return config


def test_a_second_writer_on_one_store_refuses_and_a_reader_may_read(tmp_path: Path) -> None:
    first = Store(tmp_path / "w.db", writer=True)
    with pytest.raises(StoreLocked, match=rf"in use by another watcher \(pid {os.getpid()}\)"):
        Store(tmp_path / "w.db", writer=True)
    Journal(Store(tmp_path / "w.db")).incidents()  # `watcher incidents` beside a running watcher
    first.close()
    Store(tmp_path / "w.db", writer=True).close()  # the lock went with the first


def test_a_killed_writer_never_blocks_its_successor(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from watcher.store import Store; s = Store({str(tmp_path / 'w.db')!r}, writer=True)"
            "; print('locked', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLocked):
            Store(tmp_path / "w.db", writer=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    Store(tmp_path / "w.db", writer=True).close()


def test_watcher_run_on_a_store_another_watcher_holds_says_one_line(tmp_path: Path) -> None:
    store = tmp_path / "w.db"
    held = Store(store, writer=True)
    try:
        result = watcher_run(config_for(store, tmp_path))
    finally:
        held.close()
    assert result.returncode == EXIT_STORE_LOCKED, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: store {store} is in use by another watcher (pid {os.getpid()}); one watcher per store"
    ]


def test_a_corrupt_store_is_moved_aside_and_a_fresh_one_starts(tmp_path: Path) -> None:
    garbage = os.urandom(16384)
    (tmp_path / "w.db").write_bytes(garbage)
    store = Store(tmp_path / "w.db", writer=True)
    assert store.replaced is not None and Path(store.replaced).read_bytes() == garbage  # kept for forensics
    assert Path(store.replaced).name.startswith("w.db.corrupt-")
    Policy(store).set_paused(True)
    assert Policy(store).paused  # the fresh store works
    assert store.health()["replaced_corrupt"] == store.replaced


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """The file cannot be written, even by root (who ignores modes): immutable while root, 0444 otherwise."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            pytest.skip("running as root on a filesystem without chattr +i: cannot make a file read-only")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        yield


def test_watcher_run_on_a_read_only_store_says_one_line(tmp_path: Path) -> None:
    store = tmp_path / "w.db"
    Store(store, writer=True).close()
    with read_only(store):
        result = watcher_run(config_for(store, tmp_path))
    assert result.returncode == EXIT_STORE_UNUSABLE, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: store {store} cannot be opened for writing: "), line


@pytest.fixture
def unwritable_dir() -> Iterator[tuple[Path, int | None]]:
    """A directory the watcher's user cannot write (root ignores modes: then it acts as nobody)."""
    where = Path(tempfile.mkdtemp(prefix="ro-store-"))
    where.chmod(0o555)
    try:
        yield where, (65534 if os.geteuid() == 0 else None)
    finally:
        where.rmdir()


def test_a_read_only_volume_refuses_before_the_lock(unwritable_dir: tuple[Path, int | None]) -> None:
    where, user = unwritable_dir
    if user is not None:
        os.seteuid(user)
    try:
        with pytest.raises(StoreUnwritable, match=r"is not writable: cannot create .*w\.db\.lock"):
            Store(where / "w.db", writer=True)
    finally:
        if user is not None:
            os.seteuid(0)


def test_a_store_locked_by_another_process_refuses_with_one_line(tmp_path: Path) -> None:
    Store(tmp_path / "w.db").close()
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreLocked, match="locked by another process"):
            Store(tmp_path / "w.db", writer=True)
    finally:
        other.close()


def small_pages(path: Path) -> None:
    """A store of 512-byte pages: an incident row (finding and plan) needs a page of its own, so once
    no page can be added, opening an incident fails as it would on a full disk."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size=512")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.close()


def fill_disk(store: Store) -> None:
    """SQLITE_FULL, the error a full disk gives: no page may be added, and the free ones are used up."""
    with store.reading() as db:
        db.execute("CREATE TABLE IF NOT EXISTS filler (pad BLOB)")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages}")
        for size in (400, 100, 10, 1):
            with contextlib.suppress(sqlite3.OperationalError):
                while True:
                    db.execute("INSERT INTO filler VALUES (?)", (b"x" * size,))


def free_disk(store: Store) -> None:
    with store.reading() as db:
        db.execute("PRAGMA max_page_count=1073741823")


def test_a_full_disk_keeps_watching_refuses_unjournalled_actions_and_recovers(tmp_path: Path) -> None:
    from tests.unit.test_executor import PACK, TARGETS, Alerts, FakeFleet, FakeShifter, FakeVerifier, NoDocker
    from watcher.decisions import Decisions
    from watcher.inventory import Inventory
    from watcher.live import LiveConfig, LiveWatcher
    from watcher.model import LogRecord
    from watcher.playbook.executor import STORE_NOT_WRITABLE, Executor
    from watcher.rulepack.compile import compile_packs
    from watcher.sources.base import Envelope

    (tmp_path / "p.yaml").write_text(PACK)
    ruleset = compile_packs([tmp_path / "p.yaml"])
    small_pages(tmp_path / "w.db")
    store = Store(tmp_path / "w.db", writer=True)
    shifter, alerts, journal = FakeShifter(), Alerts(), Journal(store)
    executor = Executor(
        Policy(store),
        journal,
        FakeFleet(shifter),  # type: ignore[arg-type]
        shifter,
        NoDocker(),
        FakeVerifier(),  # type: ignore[arg-type]
        alerts,
        dict(ruleset.executor_rules),
    )
    decisions = Decisions(executor.on_finding).start()
    config = LiveConfig(stats_interval_s=None, backfill_s=None, tick_s=0.05, checkpoint_s=0.05)
    live = LiveWatcher(config, ruleset, store, on_finding=decisions.submit, inventory=Inventory({})).start()
    lines = iter(range(1, 1000))

    def line(target: int) -> None:
        record = LogRecord(TARGETS[target], time.time(), "upstream timed out")
        live.queue.put(Envelope(record, "test", ("file:test", str(next(lines)))))

    try:
        fill_disk(store)
        line(1)
        wait_until(lambda: any(reason == STORE_NOT_WRITABLE for _t, _r, reason in executor.refusals))
        assert (TARGETS[1].key, "slow", STORE_NOT_WRITABLE) in executor.refusals
        assert shifter.history == [] and journal.incidents() == []  # nothing ran unjournalled
        assert any(STORE_NOT_WRITABLE in str(a.annotations) for a in alerts.fired)  # still alerting
        time.sleep(0.3)  # checkpoints go on meanwhile (those that need a new page fail, counted)
        assert live.alive and store.write_errors >= 1  # the incident (small rows may still fit a page)

        free_disk(store)
        line(2)
        wait_until(lambda: shifter.history == [(TARGETS[2].key, 0)])
        [incident] = journal.incidents()
        assert incident.target == TARGETS[2].key
        wait_until(lambda: store.get_cursor("file:test") == "2")  # the held cursors were committed
        assert live.alive and store.health()["write_ok"]
    finally:
        live.stop()
        decisions.stop()
        executor.shutdown()
        store.close()


def test_a_reader_sees_a_running_writer_and_creates_nothing(tmp_path: Path) -> None:
    from watcher.store import StoreMissing

    with pytest.raises(StoreMissing, match="no store at"):
        Store(tmp_path / "sub" / "w.db", read_only=True)
    assert list(tmp_path.iterdir()) == []
    writer = Store(tmp_path / "w.db", writer=True)
    writer.record_finding(1.0, "local/a", "oom", "oom", False, {})
    reader = Store(tmp_path / "w.db", read_only=True)  # beside the writer: WAL mode, not immutable
    assert [f["target"] for f in reader.findings()] == ["local/a"]
    writer.record_finding(2.0, "local/b", "oom", "oom", False, {})
    assert [f["target"] for f in reader.findings()] == ["local/a", "local/b"]
    reader.migrate("CREATE TABLE IF NOT EXISTS extra (x INTEGER)")  # a reader creates no table
    with writer.reading() as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    reader.close()
    writer.close()
