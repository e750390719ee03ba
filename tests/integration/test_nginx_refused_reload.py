"""Nginx refuses a reload mid-incident: the upstream file goes back, the incident is held and alerted.

Real Nginx (a host process on loopback, no Docker) in front of two in-process backends, and the
real :class:`~watcher.playbook.executor.Executor` with the real :class:`NginxShifter`; only the
restarter, verifier and alerter are recorders. Someone breaks ``nginx.conf`` (the file the
upstream file is included from) before the watcher drains a replica. Two reload paths:

* ``hup``: the master validates on SIGHUP, as for Nginx in a container (no ``nginx -t`` there):
  it logs ``[emerg]`` and keeps its old workers;
* ``nginx -t``: a host master, where the shifter's ``nginx -t`` refuses before any signal.

Either way: the incident ends HELD with the ``[emerg]`` line in the journal and in a critical
alert, the replica is never restarted, the upstream file is what Nginx still runs, traffic keeps
reaching both backends; and once the config is fixed the next finding runs the whole plan.

Servers take CPU and ports: run under ``flock /tmp/docker.lock``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from testbed.ports import free_port
from testbed.services import Nginx, Upstream
from tests.integration.test_shifter_behaviour import Backend, Rig
from watcher.actions.base import Alert, Replica
from watcher.actions.nginx import HostNginxReload, NginxShifter
from watcher.journal import IncidentState, Journal, StepStatus
from watcher.model import Finding, Predicts, Target
from watcher.playbook.executor import Executor
from watcher.policy import GuardConfig, Policy, ReplicaView
from watcher.rulepack.compile import load_packs
from watcher.store import Store

pytestmark = pytest.mark.integration

PACK = """
pack: p
defaults: {cooldown: 10m, max_restarts: {count: 3, per: 1h}, max_unavailable: 1, min_healthy: 1}
rules:
  - id: broken
    match: {log: 'model crashed'}
    predicts: crash
    then: [drain, restart]
"""
WEIGHTS = {"b0": 3, "b1": 2}
RELOAD_TIMEOUT_S = 8.0
BROKEN = "\nbogus_directive on;  # someone's edit\n"


class MasterValidates(HostNginxReload):
    """The reload path of Nginx in a container (no ``nginx -t``: the master validates on HUP), on a host master."""

    def test(self) -> None:
        return None


class Restarts:
    def __init__(self) -> None:
        self.done: list[str] = []

    def restart(self, target: Target, stop_timeout_s: float) -> dict[str, Any]:
        self.done.append(target.key)
        return {"started_at": ""}

    def recreate(self, target: Target, stop_timeout_s: float = 10.0) -> dict[str, Any]:
        raise AssertionError("the plan does not recreate")

    def state(self, target: Target) -> dict[str, Any]:
        return {"started_at": ""}


class Verifier:
    def served_version(self, replica: Replica) -> str | None:
        return "1"

    def load_failed(self, replica: Replica) -> str | None:
        return None

    def wait_available(self, replica: Replica, timeout_s: float, version: str | None = None) -> str:
        return "1"


class Alerts:
    def __init__(self) -> None:
        self.fired: list[Alert] = []

    def fire(self, alert: Alert) -> None:
        self.fired.append(alert)

    def resolve(self, alert: Alert) -> None:
        return None


class Fleet:
    def __init__(self, replicas: dict[str, Replica]) -> None:
        self.replicas = {r.target.key: r for r in replicas.values()}

    def replica(self, key: str) -> Replica | None:
        return self.replicas.get(key)

    def views(self, refresh: bool = True) -> dict[str, ReplicaView]:
        return {k: ReplicaView(k, "m", True) for k in self.replicas}


def finding(target: Target) -> Finding:
    return Finding(target=target, rule_id="broken", predicts=Predicts.CRASH, ts=time.time())


@pytest.mark.parametrize("path", ["hup", "nginx -t"])
def test_refused_reload_holds_the_incident_restores_the_file_and_alerts(tmp_path: Path, path: str) -> None:
    backends = {name: Backend(name) for name in WEIGHTS}
    lb = Nginx(tmp_path / "lb", free_port(), [Upstream(n, b.address, WEIGHTS[n]) for n, b in backends.items()])
    store = Store(tmp_path / "w.db")
    try:
        lb.start()
        rig = Rig("nginx", lb.url, backends, lambda: lb.shifter())
        replicas = {
            n: Replica(Target(n, service="m"), b.address, f"http://{b.address}", "m") for n, b in backends.items()
        }
        kind = MasterValidates if path == "hup" else HostNginxReload
        reload = kind(
            pid_file=lb.pid_path,
            nginx=lb.binary_path(),
            args=("-q", "-p", f"{lb.workdir}/", "-c", str(lb.conf_path)),
            error_log=lb.error_log_path,
        )
        log = lb.access_log_path
        shifter = NginxShifter(
            lb.upstreams_conf_path, reload, access_log=log, quiet_s=0.2, reload_timeout_s=RELOAD_TIMEOUT_S
        )
        [pack] = load_packs([_pack(tmp_path)])
        restarts, alerts, journal = Restarts(), Alerts(), Journal(store)
        executor = Executor(
            Policy(store, GuardConfig(dry_run=False)),
            journal,
            Fleet(replicas),  # type: ignore[arg-type]
            shifter,
            restarts,
            Verifier(),  # type: ignore[arg-type]
            alerts,
            {r.id: (r, pack.defaults) for r in pack.rules},
        )
        good_conf, served_file = lb.conf_path.read_text(), lb.upstreams_conf_path.read_text()
        workers = lb.worker_pids(accepting_only=True)
        b0 = replicas["b0"]

        lb.conf_path.write_text(good_conf + BROKEN)  # someone breaks the config Nginx would reload
        started = time.monotonic()
        first = executor.on_finding(finding(b0.target))
        assert first is not None, executor.refusals
        executor.wait(30)
        took = time.monotonic() - started

        incident = journal.incident(first)
        assert incident is not None and incident.state is IncidentState.HELD, incident
        assert "bogus_directive" in incident.note and "[emerg]" in incident.note
        assert [s.status for s in incident.steps] == [StepStatus.FAILED]  # drain refused; no restart journalled
        assert restarts.done == []  # traffic could not be moved away: the replica is not restarted
        assert lb.upstreams_conf_path.read_text() == served_file  # the file says what Nginx runs
        assert shifter.get_weight(b0) == 3
        assert lb.worker_pids(accepting_only=True) == workers  # the master kept its workers
        [alert] = alerts.fired
        assert alert.labels["severity"] == "critical"
        summary = alert.annotations["summary"]
        assert "refused" in summary and "[emerg]" in summary and "bogus_directive" in summary
        assert len(summary) < 1000
        if path == "hup":  # seen in the error log at once, not by waiting out the confirmation bound
            assert took < RELOAD_TIMEOUT_S / 2, took
        assert set(rig.send(20)) == {"b0", "b1"}  # both replicas still serve

        lb.conf_path.write_text(good_conf)  # fixed: the next finding acts
        second = executor.on_finding(finding(b0.target))
        assert second is not None, executor.refusals
        executor.wait(30)
        incident = journal.incident(second)
        assert incident is not None and incident.state is IncidentState.RESOLVED, incident
        assert restarts.done == [b0.target.key]
        assert lb.upstreams_conf_path.read_text() == served_file and shifter.get_weight(b0) == 3
        executor.shutdown()
    finally:
        lb.stop()
        store.close()
        for b in backends.values():
            b.close()


def _pack(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(PACK)
    return path
