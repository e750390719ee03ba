"""Record Docker events of one testbed run, so tests and the demo can say what Docker saw.

Docker resets ``State.OOMKilled`` when a restart policy brings the container back, so the
event stream (``oom``, ``die`` with ``exitCode``, ``start``, ``health_status``) is the only
reliable record of an OOM kill followed by a restart.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import docker

from testbed.replicas import TESTBED_LABEL


@dataclass(frozen=True)
class DockerEvent:
    ts: float
    container: str
    action: str  # e.g. "oom", "die", "start", "restart", "health_status: unhealthy"
    attributes: dict[str, str]


class EventRecorder:
    """Follows the engine's event stream for containers with the run's label, in a thread."""

    def __init__(self, client: docker.DockerClient, run_id: str) -> None:
        self._client = client
        self._run_id = run_id
        self._events: list[DockerEvent] = []
        self._lock = threading.Lock()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> EventRecorder:
        self._stream = self._client.events(
            decode=True,
            since=int(time.time()) - 1,
            filters={"type": "container", "label": f"{TESTBED_LABEL}={self._run_id}"},
        )
        self._thread = threading.Thread(target=self._follow, name="docker-events", daemon=True)
        self._thread.start()
        return self

    def _follow(self) -> None:
        try:
            for raw in self._stream:
                attrs = {str(k): str(v) for k, v in raw.get("Actor", {}).get("Attributes", {}).items()}
                event = DockerEvent(
                    ts=raw.get("timeNano", 0) / 1e9 or time.time(),
                    container=attrs.get("name", raw.get("id", "")[:12]),
                    action=str(raw.get("Action", raw.get("status", ""))),
                    attributes=attrs,
                )
                with self._lock:
                    self._events.append(event)
        except Exception:  # noqa: S110 - the stream ends with an error when closed; that is the stop
            pass

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def events(self, container: str | None = None, action: str | None = None) -> list[DockerEvent]:
        with self._lock:
            return [
                e
                for e in self._events
                if (container is None or e.container == container)
                and (action is None or e.action == action or e.action.startswith(action + ":"))
            ]

    def wait_for(self, container: str, action: str, timeout_s: float, after: float = 0.0) -> DockerEvent:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events(container, action):
                if event.ts >= after:
                    return event
            time.sleep(0.1)
        seen = [e.action for e in self.events(container)]
        raise TimeoutError(f"no '{action}' event for {container} within {timeout_s}s (saw {seen})")
