"""Actuators: what the watcher can do to a replica (shift traffic, restart, alert, verify).

The contracts live in :mod:`watcher.actions.base`; each family has its own module. The executor
imports from here only.
"""

from watcher.actions.alerts import AlertmanagerAlerter, WebhookAlerter
from watcher.actions.base import (
    ActionError,
    Alert,
    Alerter,
    ChangeRefused,
    Replica,
    Restarter,
    TrafficShifter,
    fingerprint,
)
from watcher.actions.docker import DockerRestarter
from watcher.actions.haproxy import HAProxyShifter
from watcher.actions.nginx import ContainerNginxReload, HostNginxReload, NginxReload, NginxShifter
from watcher.actions.verify import CannotVerifyError, SmokeFileMissingError, Verifier, VersionState

__all__ = [
    "ActionError",
    "Alert",
    "Alerter",
    "AlertmanagerAlerter",
    "CannotVerifyError",
    "ChangeRefused",
    "ContainerNginxReload",
    "DockerRestarter",
    "HAProxyShifter",
    "HostNginxReload",
    "NginxReload",
    "NginxShifter",
    "Replica",
    "Restarter",
    "SmokeFileMissingError",
    "TrafficShifter",
    "Verifier",
    "VersionState",
    "WebhookAlerter",
    "fingerprint",
]
