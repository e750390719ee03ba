"""The shipped alertmanager.yml routes every alert the watcher sends where its comments say, with amtool.

Each case is the label set the watcher really builds (the same code path as in production, not a
copy of the labels), so renaming an alert or a label without updating the routes fails here.
``test_every_alert_name_has_a_route_case`` keeps the list complete: every ``Alert``/``Alert.build``
name in the product must appear in a case.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from watcher.actions.base import Alert
from watcher.model import Target

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
REPLICA = Target("tfs-1", service="half_plus_two")

pytestmark = pytest.mark.integration


def _amtool() -> str:
    path = shutil.which("amtool")
    if path is None:
        pytest.skip("amtool is not installed (scripts/install-system.sh installs prometheus-alertmanager)")
    return path


def _incident(severity: str, **labels: str) -> Alert:
    extra = {"rule": "tfs-oom", "predicts": "oom", "incident": "7", **labels}
    return Alert.build("ServingWatcher", REPLICA, severity=severity, labels=extra)


# (what, the alert as the watcher builds it, the receiver it must reach)
CASES: list[tuple[str, Alert, str]] = [
    (
        "heartbeat",
        Alert("ServingWatcherWatchdog", {"alertname": "ServingWatcherWatchdog", "severity": "none"}),
        "deadmans-switch",
    ),
    ("incident, warning", _incident("warning"), "team"),
    ("incident, info", _incident("info"), "team"),
    ("incident, critical (held drained)", _incident("critical"), "pager"),
    ("incident, rule names receiver pager", _incident("warning", receiver="pager"), "pager"),
    ("incident, rule names receiver team", _incident("critical", receiver="team"), "team"),
    (
        "guard-rail escalation",
        Alert.build(
            "ServingWatcherEscalation",
            None,
            severity="critical",
            labels={"target": "local/tfs-1", "replica": "tfs-1", "rule": "tfs-oom", "reason": "cooldown"},
        ),
        "pager",
    ),
    (
        "store replaced",
        Alert("ServingWatcherStoreReplaced", {"alertname": "ServingWatcherStoreReplaced", "severity": "critical"}),
        "pager",
    ),
    (
        "blind spot",
        Alert.build("ServingWatcherBlind", None, severity="warning", labels={"source": "prometheus"}),
        "team",
    ),
    (
        "engine down",
        Alert.build("ServingWatcherEngineDown", None, severity="warning", labels={"engine": "host-b"}),
        "team",
    ),
]


@pytest.mark.parametrize(("what", "alert", "receiver"), CASES, ids=[c[0] for c in CASES])
def test_each_watcher_alert_reaches_its_receiver(what: str, alert: Alert, receiver: str) -> None:
    labels = [f"{k}={v}" for k, v in {"alertname": alert.name, **alert.labels}.items()]
    proc = subprocess.run(
        [_amtool(), "config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={receiver}", *labels],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"{what}: {labels} -> {proc.stdout.strip()} (expected {receiver}) {proc.stderr}"


def test_every_alert_name_has_a_route_case() -> None:
    """Every alert name the product sends (grep of ``Alert(``/``Alert.build(`` and the incident name)."""
    names: set[str] = set()
    for path in (ROOT / "watcher").rglob("*.py"):
        names |= set(re.findall(r'Alert(?:\.build)?\(\s*(?:name=)?"(\w+)"', path.read_text()))
    names |= {"ServingWatcher", "ServingWatcherEscalation"}  # ExecutorConfig.alert_name and its + "Escalation"
    assert {"ServingWatcherWatchdog", "ServingWatcherStoreReplaced", "ServingWatcherBlind"} <= names
    assert names <= {alert.name for _what, alert, _r in CASES}


def test_the_shipped_config_passes_amtool() -> None:
    proc = subprocess.run([_amtool(), "check-config", str(CONFIG)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
