"""Every actuator honours its family's contract (subclasses of each base, walked like river's checks),
plus the HAProxy runtime-API parsers on real output samples."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import watcher.actions as actions
import watcher.service  # noqa: F401 - its fan-out alerter and no-LB shifter are family members too
from tests.plugins import implementations
from watcher.actions.base import Alerter, Restarter, TrafficShifter
from watcher.actions.haproxy import parse_servers_state, parse_stat


def _subclasses(base: type[Any]) -> list[type[Any]]:
    return sorted(implementations(base), key=lambda c: c.__name__)


FAMILIES: dict[type[Any], list[type[Any]]] = {base: _subclasses(base) for base in (TrafficShifter, Restarter, Alerter)}


def _protocol_methods(proto: type[Any]) -> list[str]:
    return [n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")]


def test_the_families_are_found() -> None:
    assert {actions.NginxShifter, actions.HAProxyShifter} <= set(FAMILIES[TrafficShifter])
    assert actions.DockerRestarter in FAMILIES[Restarter]
    assert {actions.AlertmanagerAlerter, actions.WebhookAlerter} <= set(FAMILIES[Alerter])


@pytest.mark.parametrize(
    ("proto", "cls"), [(p, c) for p, classes in FAMILIES.items() for c in classes], ids=lambda x: x.__name__
)
def test_implements_protocol_with_compatible_signatures(proto: type[Any], cls: type[Any]) -> None:
    for name in _protocol_methods(proto):
        impl = getattr(cls, name, None)
        assert impl is not None, f"{cls.__name__} lacks {name}"
        want = list(inspect.signature(getattr(proto, name)).parameters)
        got = list(inspect.signature(impl).parameters)
        assert got[: len(want)] == want, f"{cls.__name__}.{name}{got} vs {proto.__name__}.{name}{want}"
        assert impl.__doc__ or getattr(proto, name).__doc__
    if proto is TrafficShifter:
        assert isinstance(inspect.getattr_static(cls, "confirms_idle"), property | bool)


def test_every_exported_actuator_is_in_a_family() -> None:
    classes = {c for cs in FAMILIES.values() for c in cs}
    exported = {
        getattr(actions, n)
        for n in actions.__all__
        if n.endswith(("Shifter", "Restarter", "Alerter")) and n not in ("TrafficShifter", "Restarter", "Alerter")
    }
    assert exported <= classes


_HEADER = [
    "be_id",
    "be_name",
    "srv_id",
    "srv_name",
    "srv_addr",
    "srv_op_state",
    "srv_admin_state",
    "srv_uweight",
    "srv_iweight",
    "srv_time_since_last_change",
    "srv_check_status",
    "srv_check_result",
    "srv_check_health",
    "srv_check_state",
    "srv_agent_state",
    "bk_f_forced_id",
    "srv_f_forced_id",
    "srv_fqdn",
    "srv_port",
    "srvrecord",
    "srv_use_ssl",
    "srv_check_port",
    "srv_check_addr",
    "srv_agent_addr",
    "srv_agent_port",
]
SERVERS_STATE = (
    "1\n# "
    + " ".join(_HEADER)
    + """
3 m 1 tfsim-0 127.0.0.1 2 0 3 3 10 1 0 0 0 0 0 0 - 8001 - 0 0 - - 0
3 m 2 tfsim-1 127.0.0.1 2 8 2 2 10 1 0 0 0 0 0 0 - 8002 - 0 0 - - 0
"""
)

STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot
fe_m,FRONTEND,,,1,2,262,5
m,tfsim-0,0,0,1,1,,4
m,tfsim-1,2,2,0,1,,1
m,BACKEND,0,0,1,2,27,5
"""


def test_parse_servers_state_and_stat() -> None:
    rows = {r["srv_name"]: r for r in parse_servers_state(SERVERS_STATE)}
    assert rows["tfsim-0"]["srv_port"] == "8001" and rows["tfsim-1"]["srv_admin_state"] == "8"
    stat = {(r["pxname"], r["svname"]): r for r in parse_stat(STAT)}
    assert stat[("m", "tfsim-0")]["scur"] == "1" and stat[("m", "tfsim-1")]["qcur"] == "2"
