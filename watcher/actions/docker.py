"""Restart or recreate a replica's container, on whichever Docker engine runs it.

``restart`` is Docker's graceful restart (SIGTERM, ``stop_timeout_s`` grace, then SIGKILL) and
returns only once the engine reports the container running again with a new start time, so the
next step (wait for the model) never races a container that has not stopped yet.

``recreate`` is for the case a restart does not cure (a corrupted writable layer, a container
created with a bad runtime state): stop the old container, rename it aside, create a new one with
the *same* configuration (image by ID, command, env, labels, health check, host config), start it,
and only then remove the old one. If the new one cannot be created or started, it is removed and
the old one is renamed back and started, so a failed recreate leaves the replica as it was.
Secondary networks (``docker network connect``) are not re-attached: the primary network comes
from ``HostConfig.NetworkMode``, which is all the supported deployments use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from watcher.actions.base import ActionError, Restarter
from watcher.model import Target

__all__ = ["DockerRestarter"]


class DockerRestarter(Restarter):
    """A :class:`~watcher.actions.base.Restarter` over one Docker client per engine name."""

    def __init__(
        self,
        clients: Mapping[str, Any],
        *,
        start_timeout_s: float = 30.0,
        poll_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.clients = dict(clients)
        self.start_timeout_s = start_timeout_s
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep

    def _client(self, target: Target) -> Any:
        try:
            return self.clients[target.engine]
        except KeyError:
            raise ActionError(f"no Docker client for engine {target.engine!r} (target {target.key})") from None

    def _container(self, target: Target) -> Any:
        try:
            return self._client(target).containers.get(target.container)
        except ActionError:
            raise
        except Exception as exc:  # docker.errors.NotFound / APIError / connection errors
            raise ActionError(f"container {target.key}: {exc}") from None

    def state(self, target: Target) -> dict[str, Any]:
        """A flat view of the container's state: what the policy and the journal record."""
        container = self._container(target)
        attrs = container.attrs
        st = attrs.get("State", {})
        return {
            "id": attrs.get("Id", "")[:12],
            "status": st.get("Status"),
            "running": bool(st.get("Running")),
            "restarting": bool(st.get("Restarting")),
            "oom_killed": bool(st.get("OOMKilled")),
            "exit_code": st.get("ExitCode"),
            "started_at": st.get("StartedAt"),
            "finished_at": st.get("FinishedAt"),
            "health": (st.get("Health") or {}).get("Status"),
            "restart_count": attrs.get("RestartCount", 0),
        }

    def _wait_running(self, target: Target, not_started_at: str | None, what: str) -> dict[str, Any]:
        deadline = self._clock() + self.start_timeout_s
        while True:
            state = self.state(target)
            if state["running"] and not state["restarting"] and state["started_at"] != not_started_at:
                return state
            if self._clock() > deadline:
                raise ActionError(
                    f"{what} {target.key}: not running again within {self.start_timeout_s}s "
                    f"(status {state['status']}, exit code {state['exit_code']}, oom_killed {state['oom_killed']})"
                )
            self._sleep(self.poll_s)

    def restart(self, target: Target, stop_timeout_s: float) -> dict[str, Any]:
        """Graceful ``docker restart``; returns the new state once the container runs again."""
        container = self._container(target)
        before = container.attrs.get("State", {}).get("StartedAt")
        try:
            container.restart(timeout=max(0, round(stop_timeout_s)))
        except Exception as exc:
            raise ActionError(f"restart {target.key} failed: {exc}") from None
        return self._wait_running(target, before, "restart")

    def recreate(self, target: Target, stop_timeout_s: float = 10.0) -> dict[str, Any]:
        """A new container with the same configuration (see the module doc for rollback)."""
        client = self._client(target)
        old = self._container(target)
        attrs = old.attrs
        cfg = attrs.get("Config", {})
        host_config = dict(attrs.get("HostConfig", {}))
        kwargs: dict[str, Any] = {
            "image": attrs.get("Image") or cfg.get("Image"),  # by ID: the same image, not a newer tag
            "command": cfg.get("Cmd"),
            "entrypoint": cfg.get("Entrypoint"),
            "environment": cfg.get("Env"),
            "labels": cfg.get("Labels"),
            "working_dir": cfg.get("WorkingDir") or None,
            "user": cfg.get("User") or None,
            "healthcheck": cfg.get("Healthcheck"),
            "stop_signal": cfg.get("StopSignal"),
            # a hostname Docker derived from the old ID (or the host's, in host mode) is not config
            "hostname": None
            if host_config.get("NetworkMode") == "host" or cfg.get("Hostname") == attrs.get("Id", "")[:12]
            else cfg.get("Hostname"),
            "name": target.container,
            "host_config": host_config,
        }
        aside = f"{target.container}-old-{int(time.time())}"
        try:
            old.stop(timeout=max(0, round(stop_timeout_s)))
            old.rename(aside)
        except Exception as exc:
            raise ActionError(f"recreate {target.key}: stopping the old container failed: {exc}") from None
        new_id: str | None = None
        try:
            created = client.api.create_container(**kwargs)
            new_id = str(created["Id"])
            client.api.start(new_id)
            state = self._wait_running(target, None, "recreate")
        except Exception as exc:
            if new_id is not None:
                try:
                    client.api.remove_container(new_id, force=True)
                except Exception as cleanup:
                    exc = ActionError(f"{exc}; and removing the new container failed: {cleanup}")
            try:
                old.rename(target.container)
                old.start()
            except Exception as rollback:
                raise ActionError(
                    f"recreate {target.key} failed ({exc}) and rolling back to the old container failed: {rollback}"
                ) from None
            raise ActionError(f"recreate {target.key} failed, old container restarted: {exc}") from None
        try:
            old.remove(force=True)
        except Exception as exc:
            state["warning"] = f"old container {aside} not removed: {exc}"
        return state
