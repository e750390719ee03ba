"""Docker container lifecycle events (oom, die, health_status, start, restart, stop, destroy) as signals.

The event stream is the only reliable record of an OOM kill followed by a restart (Docker resets
``State.OOMKilled`` when the restart policy brings the container back), so losing events matters:
on reconnect the stream resumes with ``since`` = the last event's time (Docker's ``since`` is
inclusive, so events at exactly that nanosecond are de-duplicated). The cursor is persisted per
engine through ``Envelope.cursor`` so a restarted watcher also picks up what happened while it was
down, bounded by ``max_replay_s`` so a long outage does not replay old history as if it were news.

The stream is the inventory's (:mod:`watcher.inventory`), one per engine for the whole watcher: it
opens it from the ``since`` this source asks for and forwards every event here first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from watcher.inventory import DEFAULT_SELECTOR, EngineState, Inventory, Subscriber, shared_or_own, target_of
from watcher.model import Lifecycle, LifecycleKind
from watcher.sources.base import Envelope, SignalQueue, Source
from watcher.sources.docker_logs import since_param
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
        target=target_of(name, engine, attrs, service_label),
        ts=ts,
        kind=kind,
        exit_code=exit_code,
        health=health,
        attributes=attributes,
    )


class DockerEventsSource(Source):
    """Each engine's container events, read from the inventory's one stream per engine, losing nothing.

    The inventory owns the stream, its reconnects and backoff; this source tells it where to resume
    (``since``, from this source's cursor) and turns each event it forwards into a Lifecycle signal.
    """

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
        inventory: Inventory | None = None,
    ) -> None:
        """``inventory``: the watcher's shared one; without it (``engines``, ``label_selector``,
        ``service_label`` and ``backoff_cap_s`` then describe it) the source keeps a private one."""
        super().__init__(queue)
        self.store = store
        self.inventory, self._owns_inventory = shared_or_own(
            inventory, engines, label_selector, service_label, backoff_cap_s=backoff_cap_s
        )
        self.service_label = self.inventory.names.service
        self.max_replay_s = max_replay_s
        self.started_at = time.time()
        self._last_ns: dict[str, int] = {}
        self._seen_at_last: dict[str, set[str]] = {}
        self._engine_ok: dict[str, bool] = dict.fromkeys(self.inventory.engine_names, False)
        self.events_seen = 0
        self._subscriber = Subscriber(on_event=self._handle, on_engine=self._on_engine, since=self._since)

    @property
    def reconnects(self) -> int:
        return sum(state.reconnects for state in self.inventory.engine_states().values())

    def cursor_key(self, engine: str) -> str:
        return f"docker_events/{engine}"

    def start(self) -> None:
        if not self._claim_start():
            return
        self.started_at = time.time()
        self.inventory.subscribe(self._subscriber)  # before the inventory opens its stream: since is ours
        for engine, state in self.inventory.engine_states().items():
            self._on_engine(engine, state)
        if self._owns_inventory:
            self.inventory.start()

    def stop(self) -> None:
        super().stop()
        self.inventory.unsubscribe(self._subscriber)
        if self._owns_inventory:
            self.inventory.stop()
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

    def _on_engine(self, engine: str, state: EngineState) -> None:
        self._engine_ok[engine] = state.streaming
        self.connected = all(self._engine_ok.values())
        if not state.streaming and state.error:
            self._error(state.error)

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
