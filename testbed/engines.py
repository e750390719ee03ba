"""Extra Docker engines that a test starts, restarts and stops itself, beside the shared one.

The shared engine (``/var/run/docker.sock``) serves every other test, so a test that needs to
restart an engine, or a fleet of several engines (issue #18), runs its own: a ``dockerd`` with its
own socket, data root, exec root (where that dockerd starts its own containerd) and PID file, all
under one short directory in ``/tmp`` (a unix socket path is limited to 108 bytes, and containerd's
socket lives under the exec root, so pytest's long ``tmp_path`` would not do). Flags are the
testbed's loopback-safe ones: no bridge, no iptables, no masquerading; containers use host
networking.

Only the process this object started is ever signalled, by its PID, and the directory is removed
when it is closed. With ``--live-restore`` containers outlive their engine, so :meth:`close`
removes every container before the last stop, or their shims would run on with nothing to manage
them. Hold ``/tmp/docker.lock`` while one runs (see the helper rules): two engines on two cores
already compete with each other.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import docker
from docker.errors import DockerException


def docker_socket() -> str:
    """The shared engine's socket path: ``DOCKER_HOST`` when it names a unix socket, else Docker's default."""
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else "/var/run/docker.sock"


HOST_TOOLS = ("dash", "sleep", "cat")  # what a container that prints needs: see import_host_tools
_TERM_TIMEOUT_S = 30.0  # dockerd stops its containers (without live-restore) before it exits


class EngineError(RuntimeError):
    """An extra engine did not come up or go down; the message carries the tail of its log."""


class ExtraEngine:
    """One ``dockerd`` of the test's own: start, stop (SIGTERM, by PID), restart with the same flags.

    ``live_restore``: containers keep running while the engine is down (``--live-restore``), as on
    a production host that restarts Docker for an upgrade; without it the engine stops them on the
    way down and starts those with a restart policy when it comes back.
    """

    def __init__(self, live_restore: bool = True, root: Path | None = None, name: str = "extra") -> None:
        self.name = name
        self.live_restore = live_restore
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="wde-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.pidfile = self.root / "docker.pid"
        self.logfile = self.root / "dockerd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._client: docker.DockerClient | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """What the watcher's settings name the engine by (``engines: {name: url}``)."""
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def command(self) -> list[str]:
        cmd = ["dockerd", "--bridge=none", "--iptables=false", "--ip-masq=false", "-H", self.url]
        cmd += ["--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec")]
        cmd += ["--pidfile", str(self.pidfile)]
        return [*cmd, "--live-restore"] if self.live_restore else cmd

    def client(self) -> docker.DockerClient:
        """A client of this engine (one, reused: it reconnects by itself after a restart)."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.url, timeout=30)
        return self._client

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> float:
        """Start dockerd and wait until it answers; returns how long that took (seconds)."""
        if self.pid is not None:
            raise EngineError(f"{self.name}: already running (pid {self.pid})")
        if shutil.which("dockerd") is None:
            raise EngineError("dockerd is not installed (scripts/install-system.sh)")
        self.root.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self._log = self.logfile.open("ab")
        # Own session: a Ctrl-C meant for pytest must not reach the engine half-way through a test.
        self._proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.starts += 1
        deadline = t0 + timeout_s
        try:
            return self._wait_answering(t0, deadline, timeout_s)
        except BaseException:
            self.stop(timeout_s=5)  # never leave a half-started engine behind
            raise

    def _wait_answering(self, t0: float, deadline: float, timeout_s: float) -> float:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise EngineError(f"{self.name}: dockerd exited with {self._proc.returncode}\n{self.log_tail()}")
            try:  # a client asks the engine for its API version as it is made: that is the probe
                docker.DockerClient(base_url=self.url, timeout=2).close()
                return time.monotonic() - t0
            except DockerException:
                pass
            if time.monotonic() > deadline:
                raise EngineError(f"{self.name}: dockerd did not answer in {timeout_s:.0f} s\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = _TERM_TIMEOUT_S) -> float:
        """SIGTERM the dockerd started here and wait for it to exit (SIGKILL after ``timeout_s``);
        returns how long it took. Its own containerd goes down with it."""
        proc, t0 = self._proc, time.monotonic()
        if proc is None:
            return 0.0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return time.monotonic() - t0

    def restart(self, down_s: float = 0.0) -> tuple[float, float]:
        """Stop, stay down ``down_s``, start again with the same flags: (stop took, start took)."""
        stopped = self.stop()
        time.sleep(down_s)
        return stopped, self.start()

    def close(self) -> None:
        """Remove every container, stop the engine, unmount and delete its directory. Safe to call twice.

        dockerd leaves mounts under its roots (a private bind of the data root, the default network
        namespace under the exec root) when it stops with live-restore, so they are detached first."""
        if self.pid is not None:
            try:
                for container in self.client().containers.list(all=True):
                    container.remove(force=True)
            except DockerException:
                pass  # the stop below still ends the engine; leftovers are in its log
            self.stop()
        if self._client is not None:
            self._client.close()
            self._client = None
        for mountpoint in self.mounts():
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def mounts(self) -> list[str]:
        """Mount points under this engine's directory, deepest first (the order to detach them)."""
        root = str(self.root.resolve())
        try:
            lines = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return []
        points = {line.split()[1] for line in lines if len(line.split()) > 1}
        inside = [p for p in points if p == root or p.startswith(root + "/")]
        return sorted(inside, key=len, reverse=True)

    def __enter__(self) -> ExtraEngine:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- images and diagnostics -----------------------------------------------------------------------
    def copy_image(self, source: docker.DockerClient, tag: str) -> float:
        """Bring ``tag`` over from another engine (``docker save | docker load``, streamed; no
        registry is reachable); returns the seconds it took. A no-op when it is here already."""
        dst = self.client()
        t0 = time.monotonic()
        try:
            dst.images.get(tag)
            return 0.0
        except docker.errors.ImageNotFound:
            pass
        dst.api.load_image(source.api.get_image(tag), quiet=True)
        dst.images.get(tag)  # raises if the load did not produce it
        return time.monotonic() - t0

    def import_host_tools(self, tag: str = "extra-engine/tools:latest", tools: tuple[str, ...] = HOST_TOOLS) -> float:
        """Make a tiny image of host binaries (a shell, ``sleep``) and the libraries they load, at
        their host paths (run them by name: Docker's default PATH finds them), and ``docker import``
        it; returns the seconds it took. About 2 MB instead of the testbed's
        169 MB base image: for a container that only has to print, it is there in well under a
        second where ``copy_image`` takes several."""
        t0 = time.monotonic()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path in sorted(_with_libraries(tools)):
                tar.add(path, arcname=path.lstrip("/"), recursive=False)
        repository, _, version = tag.partition(":")
        self.client().api.import_image_from_data(buf.getvalue(), repository=repository, tag=version or "latest")
        self.client().images.get(tag)
        return time.monotonic() - t0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _with_libraries(tools: tuple[str, ...]) -> set[str]:
    """The host paths of ``tools`` and every shared library ``ldd`` says they load (symlinks kept
    as symlinks, so their targets are added too)."""
    paths: set[str] = set()
    for tool in tools:
        exe = shutil.which(tool)
        if exe is None:
            raise EngineError(f"{tool} is not on this host")
        paths.add(exe)
        out = subprocess.run(["ldd", exe], capture_output=True, text=True, check=False).stdout
        paths.update(re.findall(r"(/\S+)", out))
    for path in list(paths):
        p = Path(path)
        while p.is_symlink():
            target = p.readlink()
            p = Path(os.path.normpath(target if target.is_absolute() else p.parent / target))
            paths.add(str(p))
    return paths
