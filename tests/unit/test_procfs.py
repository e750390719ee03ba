"""/proc readers against real processes this test starts (and reaps)."""

from __future__ import annotations

import os
import subprocess
import sys

from watcher import procfs


def test_children_alive_and_cmdline_follow_a_real_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker-arg"])
    try:
        assert child.pid in procfs.children(os.getpid())
        assert procfs.alive(child.pid)
        title = procfs.cmdline(child.pid)
        assert title is not None and "marker-arg" in title
    finally:
        child.kill()
        child.wait()
    assert child.pid not in procfs.children(os.getpid())
    assert not procfs.alive(child.pid)
    assert procfs.cmdline(child.pid) is None


def test_a_zombie_is_neither_alive_nor_a_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
    try:
        assert not procfs.alive(child.pid)
        assert child.pid not in procfs.children(os.getpid())
    finally:
        child.wait()
