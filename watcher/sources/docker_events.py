"""Docker container lifecycle events (oom, die, health_status, start, restart, stop, destroy) as signals.

The event stream is the only reliable record of an OOM kill followed by a restart (Docker resets
``State.OOMKilled`` when the restart policy brings the container back), so losing events matters:
on reconnect the stream resumes with ``since`` = the last event's time (Docker's ``since`` is
inclusive, so events at exactly that nanosecond are de-duplicated). The cursor is persisted per
engine through ``Envelope.cursor`` so a restarted watcher also picks up what happened while it was
down, bounded by ``max_replay_s`` so a long outage does not replay old history as if it were news.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from watcher.model import Lifecycle, LifecycleKind, Target
from watcher.retry import Backoff
from watcher.sources.base import Envelope, SignalQueue, Source
from watcher.sources.docker_logs import DEFAULT_SELECTOR, make_clients, since_param
from watcher.store import Store

_ACTIONS = {
    "oom": LifecycleKind.OOM,
    "die": LifecycleKind.DIE,
    "start": LifecycleKind.START,
    "restart": LifecycleKind.RESTART,
    "stop": LifecycleKind.STOP,
    "destroy": LifecycleKind.DESTROY,
}


def to_lifecycle(event: Mapping[str, Any], engine: str, service_label: str) -> Lifecycle | None:
    """One decoded Docker event -> a Lifecycle signal, or None for actions the watcher ignores."""
    action = str(event.get("Action") or event.get("status") or "")
    attrs = {str(k): str(v) for k, v in (event.get("Actor", {}).get("Attributes") or {}).items()}
    health: str | None = None
    if action.startswith("health_status"):
        kind = LifecycleKind.HEALTH_STATUS
        health = action.partition(":")[2].strip() or None
    elif action in _ACTIONS:
        kind = _ACTIONS[action]
    else:
        return None  # exec_start, attach, kill, ...: not lifecycle
    exit_code: int | None = None
    if kind is LifecycleKind.DIE and attrs.get("exitCode", "").lstrip("-").isdigit():
        exit_code = int(attrs["exitCode"])
    time_nano = event.get("timeNano")
    ts = int(time_nano) / 1e9 if time_nano else float(event.get("time") or time.time())
    cid = str(event.get("id") or event.get("Actor", {}).get("ID") or "")
    name = attrs.get("name", cid[:12])
    attributes = {"id": cid, "action": action, **attrs}
    return Lifecycle(
        target=Target(container=name, engine=engine, service=attrs.get(service_label)),
        ts=ts,
        kind=kind,
        exit_code=exit_code,
        health=health,
        attributes=attributes,
    )


class DockerEventsSource(Source):
    """Follows each engine's container events in a thread; reconnects with backoff, losing nothing."""

    name = "docker_events"

    def __init__(
        self,
        queue: SignalQueue,
        store: Store | None = None,
        engines: Mapping[str, Any] | None = None,
        label_selector: Sequence[str] = DEFAULT_SELECTOR,
        service_label: str = "watcher.service",
        max_replay_s: float = 300.0,
        backoff_cap_s: float = 30.0,
    ) -> None:
        super().__init__(queue)
        self.store = store
        self.clients = make_clients(engines)
        self.label_selector = list(label_selector)
        self.service_label = service_label
        self.max_replay_s = max_replay_s
        self.backoff_cap_s = backoff_cap_s
        self.started_at = time.time()
        self._last_ns: dict[str, int] = {}
        self._seen_at_last: dict[str, set[str]] = {}
        self._streams: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []
        self._engine_ok: dict[str, bool] = dict.fromkeys(self.clients, False)
        self.reconnects = 0
        self.events_seen = 0

    def cursor_key(self, engine: str) -> str:
        return f"docker_events/{engine}"

    def start(self) -> None:
        self._stop.clear()
        self.started_at = time.time()
        for engine in self.clients:
            t = threading.Thread(target=self._follow, args=(engine,), name=f"events-{engine}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        super().stop()
        for stream in list(self._streams.values()):
            with contextlib.suppress(Exception):  # a dead socket cannot be closed twice; the thread ends anyway
                stream.close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self.connected = False

    def _since(self, engine: str) -> str:
        floor_ns = int((time.time() - self.max_replay_s) * 1e9)
        last = self._last_ns.get(engine)
        if last is None and self.store is not None:
            stored = self.store.get_cursor(self.cursor_key(engine))
            last = int(stored) if stored and stored.isdigit() else None
        if last is None:
            last = int(self.started_at * 1e9)
        return since_param(max(last, floor_ns))

    def _follow(self, engine: str) -> None:
        client = self.clients[engine]
        backoff = Backoff(0.5, self.backoff_cap_s)
        while not self.stopping:
            try:
                stream = client.events(
                    decode=True,
                    since=self._since(engine),
                    filters={"type": "container", "label": self.label_selector},
                )
                self._streams[engine] = stream
                if self.stopping:
                    stream.close()
                    return
                self._engine_ok[engine] = True
                self.connected = all(self._engine_ok.values())
                backoff.reset()
                for event in stream:
                    self._handle(engine, event)
                if self.stopping:
                    return
                raise ConnectionError("event stream ended")
            except Exception as exc:
                if self.stopping:
                    return
                self._engine_ok[engine] = False
                self.connected = False
                self._error(f"{engine}: event stream: {exc}")
                self.reconnects += 1
            if self._stop.wait(backoff.next_delay()):
                return

    def _handle(self, engine: str, event: Mapping[str, Any]) -> None:
        time_nano = int(event.get("timeNano") or 0)
        key = f"{event.get('id', '')}/{event.get('Action', event.get('status', ''))}"
        last = self._last_ns.get(engine, 0)
        if time_nano and time_nano < last:
            return  # replayed by an inclusive ``since``
        if time_nano == last and key in self._seen_at_last.get(engine, set()):
            return
        if time_nano > last:
            self._last_ns[engine] = time_nano
            self._seen_at_last[engine] = set()
        self._seen_at_last.setdefault(engine, set()).add(key)
        signal = to_lifecycle(event, engine, self.service_label)
        if signal is None:
            return
        self.events_seen += 1
        cursor = (self.cursor_key(engine), str(time_nano)) if time_nano else None
        self.queue.put(Envelope(signal, f"docker_events:{engine}", cursor))

    def status(self) -> dict[str, Any]:
        s = super().status()
        s["engines"] = dict(self._engine_ok)
        s["reconnects"] = self.reconnects
        return s
