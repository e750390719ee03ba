"""Docker event and stats documents -> signals, without Docker."""

from __future__ import annotations

from watcher.model import LifecycleKind, Target
from watcher.sources.docker_events import to_lifecycle
from watcher.sources.docker_stats import stats_to_values


def event(action: str, **attrs: str) -> dict[str, object]:
    return {
        "Type": "container",
        "Action": action,
        "id": "abc123def4567890",
        "timeNano": 1714557600_123456789,
        "Actor": {"ID": "abc123def4567890", "Attributes": {"name": "tfsim-0", "image": "tfsim:1", **attrs}},
    }


def test_die_with_exit_code() -> None:
    sig = to_lifecycle(event("die", exitCode="137", **{"watcher.service": "m"}), "e1", "watcher.service")
    assert sig is not None and sig.kind is LifecycleKind.DIE and sig.exit_code == 137
    assert sig.target == Target("tfsim-0", engine="e1", service="m")
    assert sig.ts == 1714557600.123456789 and sig.attributes["image"] == "tfsim:1"


def test_health_and_others() -> None:
    sig = to_lifecycle(event("health_status: unhealthy"), "local", "watcher.service")
    assert sig is not None and sig.kind is LifecycleKind.HEALTH_STATUS and sig.health == "unhealthy"
    for action, kind in [
        ("oom", LifecycleKind.OOM),
        ("start", LifecycleKind.START),
        ("destroy", LifecycleKind.DESTROY),
    ]:
        got = to_lifecycle(event(action), "local", "watcher.service")
        assert got is not None and got.kind is kind and got.exit_code is None
    assert to_lifecycle(event("exec_start: sh -c true"), "local", "watcher.service") is None


def test_stats_cgroup_v1_and_v2() -> None:
    v1 = {
        "memory_stats": {"usage": 100_000_000, "limit": 134_217_728, "stats": {"total_inactive_file": 30_000_000}},
        "cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
    }
    assert stats_to_values(v1) == {
        "memory_usage_bytes": 100_000_000.0,
        "memory_working_set_bytes": 70_000_000.0,
        "memory_limit_bytes": 134_217_728.0,
        "cpu_usage_seconds_total": 2.5,
    }
    v2 = {"memory_stats": {"usage": 50, "limit": 1000, "stats": {"inactive_file": 80}}, "cpu_stats": {}}
    assert stats_to_values(v2) == {
        "memory_usage_bytes": 50.0,
        "memory_working_set_bytes": 0.0,
        "memory_limit_bytes": 1000.0,
    }
    assert stats_to_values({}) == {}  # a stopped container's empty document
