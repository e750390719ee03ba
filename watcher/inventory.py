"""Which containers the watcher watches, on every Docker engine: the one place that lists them.

In the spirit of Prometheus service discovery, the inventory keeps the *current* set of selected
containers (the replicas) and publishes it; the consumers (log follower, stats, fleet, upstream
map) read it or react to its updates instead of each listing Docker on its own schedule.

Per engine there is ONE Docker events stream (``type=container`` and the label selector), which
keeps the set current within milliseconds, and a periodic rescan (``list all=True``), which
repairs whatever a dropped stream missed. Every (re)connect of the stream is followed by a rescan,
so a container started while the stream was down is found at once; and a rescan that finds the
engine answering while its stream is down reconnects the stream at once, so after a restarted
dockerd the stream is back within one rescan period, not after a backoff grown during the outage.
The raw events are forwarded, before anything else is done with them, to the subscribers that
want them (the lifecycle source), so the whole watcher reads one stream per engine. That stream
resumes from the earliest ``since`` its subscribers ask for (the lifecycle source's persisted
cursor), so restarts lose nothing.

State is re-read from Docker (``inspect``) on every state-changing event rather than inferred from
the event, so replayed, reordered or missed events cannot leave a wrong state behind; events older
than the last rescan are already reflected in it and skip the inspect. A destroyed container is
forgotten at once (its ``destroy`` event, a 404 on inspect, or its absence from the next rescan),
so the inventory holds no more than Docker does. An engine whose listing fails keeps its last
known containers internally but is left out of ``Snapshot.current()`` until a listing succeeds
again, as the consumers that used to list Docker themselves skipped an engine that failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import docker

from watcher.model import Target
from watcher.retry import Backoff

log = logging.getLogger(__name__)

DEFAULT_SELECTOR = ("watcher.enable=true",)

# Actions after which a container's state may differ: re-read it. (exec_*, attach, top, ... do not.)
_STATE_ACTIONS = frozenset(
    {"create", "start", "restart", "die", "stop", "kill", "oom", "pause", "unpause", "rename", "update"}
)
_REPLAY_MARGIN_NS = 1_000_000_000  # clock skew between this host and a remote engine


# -- pure pieces -------------------------------------------------------------------------------------
def parse_selector(selector: Sequence[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for item in selector:
        key, sep, value = item.partition("=")
        out.append((key, value if sep else None))
    return out


def matches_selector(labels: Mapping[str, str], selector: Sequence[str]) -> bool:
    """Docker's label filter semantics (all terms must hold), for events and tests."""
    for key, value in parse_selector(selector):
        if key not in labels or (value is not None and labels[key] != value):
            return False
    return True


POOL_SIZE = 64  # connections kept per engine
THOROUGH_EVERY = 6  # every 6th periodic rescan inspects every container (see Inventory._rescan_one)


def list_mark(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a container's entry in Docker's list shows of the state the inventory keeps: names,
    state, health (the parenthesised end of ``Status``, whose uptime changes all the time) and labels.
    The same mark twice means no inspect is needed to know nothing listed changed."""
    status = str(entry.get("Status") or "")
    health = status[status.rfind("(") :] if status.endswith(")") else ""
    labels = entry.get("Labels") or {}
    return (tuple(entry.get("Names") or ()), entry.get("State"), health, tuple(sorted(labels.items())))


class _LateVersionAPIClient(docker.APIClient):  # type: ignore[misc]
    """docker-py's client asks the engine for its API version when it is built, and raises when the
    engine is down — a watcher started before its engine would die with a traceback. This one asks on
    its first versioned request instead (and again on the next, until it has an answer), so an engine
    that is down is just a failing request: the sources retry it with backoff and /readyz says so."""

    _PLACEHOLDER = "1.24"  # never sent: replaced by the engine's own version before the first versioned call

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        version = kwargs.pop("version", None)
        self._late = version is None or (isinstance(version, str) and version.lower() == "auto")
        # A log stream holds a connection per followed container: docker-py's 10 made a fleet's
        # engine client open and throw away connections ("Connection pool is full").
        kwargs.setdefault("max_pool_size", POOL_SIZE)
        super().__init__(*args, version=self._PLACEHOLDER if self._late else version, **kwargs)
        # The engine's address is the engines setting, nothing else: no proxy or ~/.netrc from the
        # environment may re-route the Docker API or send it credentials, and requests would stat
        # ~/.netrc and walk the environment on every call (a fleet makes dozens a second).
        self.trust_env = False

    def _url(self, pathfmt: str, *args: Any, **kwargs: Any) -> str:
        if self._late and kwargs.get("versioned_api", True):
            self._version = self._retrieve_server_version()  # DockerException while the engine is down
            self._late = False
        return str(super()._url(pathfmt, *args, **kwargs))


class _LateVersionDockerClient(docker.DockerClient):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.api = _LateVersionAPIClient(*args, **kwargs)


def make_clients(engines: Mapping[str, Any] | None) -> dict[str, docker.DockerClient]:
    """Engine name -> client. A value is a base URL (``unix://...``, ``tcp://127.0.0.1:2375``), ``""``
    for the engine the environment names (``DOCKER_HOST``, else the local socket), or a client.
    Building a client never contacts the engine (see :class:`_LateVersionAPIClient`)."""
    if not engines:
        return {"local": _LateVersionDockerClient.from_env()}
    clients: dict[str, docker.DockerClient] = {}
    for name, spec in engines.items():
        if isinstance(spec, str):
            clients[name] = _LateVersionDockerClient(base_url=spec) if spec else _LateVersionDockerClient.from_env()
        else:
            clients[name] = spec
    return clients


def target_of(name: str, engine: str, labels: Mapping[str, str], service_label: str) -> Target:
    """THE way a container becomes a Target: its name, its engine, its service label.

    Every signal about a container (log line, stats sample, lifecycle event, Prometheus series) and
    every actuator's view of it must agree on this, or per-target state and peers would split.
    """
    return Target(container=name.lstrip("/"), engine=engine, service=labels.get(service_label))


@dataclass(frozen=True)
class LabelNames:
    """The labels that make a container a watched replica, from the settings."""

    selector: tuple[str, ...] = DEFAULT_SELECTOR
    service: str = "watcher.service"
    upstream: str = "watcher.upstream"  # how the load balancer addresses the replica ("127.0.0.1:8501")
    model: str = "watcher.model"
    protocol: str = "watcher.protocol"  # the serving protocol the watcher verifies it with (default tfserving)


ROLE_LABEL = "watcher.role"
LOAD_BALANCER_ROLE = "load-balancer"  # ``watcher.role=load-balancer``: the container is the load balancer


@dataclass(frozen=True)
class WatchedContainer:
    """One selected container as the inventory last saw it."""

    engine: str
    id: str
    name: str
    target: Target
    labels: Mapping[str, str]
    upstream: str | None
    model: str | None
    running: bool
    health: str | None  # "healthy", "unhealthy", "starting" or None (no healthcheck)
    started_at: str  # changes on every (re)start: how a restart is told from "still running"
    tty: bool  # a TTY container's logs are not multiplexed
    protocol: str | None = None  # the protocol label's value; None = the default (tfserving)

    @property
    def key(self) -> str:
        return self.target.key

    @property
    def load_balancer(self) -> bool:
        """Labelled ``watcher.role=load-balancer`` (Nginx in a container): its log lines are the load
        balancer's own, the only container lines that may name a replica by upstream address. From
        Docker's metadata, never from a line."""
        return self.labels.get(ROLE_LABEL) == LOAD_BALANCER_ROLE

    @property
    def serving(self) -> bool:
        """Running and not reported unhealthy: what the capacity rails count."""
        return self.running and self.health != "unhealthy"

    @staticmethod
    def of(engine: str, container: Any, names: LabelNames) -> WatchedContainer:
        """From a docker-py Container (its ``attrs`` are a full inspect)."""
        labels = {str(k): str(v) for k, v in (container.labels or {}).items()}
        attrs = container.attrs or {}
        state = attrs.get("State") or {}
        return WatchedContainer(
            engine=engine,
            id=str(container.id),
            name=str(container.name),
            target=target_of(str(container.name), engine, labels, names.service),
            labels=labels,
            upstream=labels.get(names.upstream) or None,
            model=labels.get(names.model) or None,
            protocol=labels.get(names.protocol) or None,
            running=bool(state.get("Running")),
            health=(state.get("Health") or {}).get("Status"),
            started_at=str(state.get("StartedAt") or ""),
            tty=bool((attrs.get("Config") or {}).get("Tty", False)),
        )


@dataclass(frozen=True)
class Snapshot:
    """The containers known on each engine at one moment (immutable; safe to keep and iterate)."""

    engines: Mapping[str, Mapping[str, WatchedContainer]]  # engine -> container id -> container
    listed: Mapping[str, bool]  # engine -> whether its last listing succeeded

    def current(self, engine: str | None = None) -> Iterator[WatchedContainer]:
        """The containers of the engines whose last listing succeeded (all states), engine by engine."""
        for name, containers in self.engines.items():
            if (engine is None or name == engine) and self.listed.get(name, False):
                yield from containers.values()

    def running(self, engine: str | None = None) -> Iterator[WatchedContainer]:
        return (c for c in self.current(engine) if c.running)

    def unknown(self) -> Iterator[WatchedContainer]:
        """The last known containers of the engines whose last listing failed: their state is unknown
        (the engine is down or cut off), so the capacity rails count them as unavailable."""
        for name, containers in self.engines.items():
            if not self.listed.get(name, False):
                yield from containers.values()

    def by_key(self, key: str) -> WatchedContainer | None:
        """``engine/name`` -> the container now carrying that name."""
        return next((c for c in self.current() if c.key == key), None)


@dataclass(frozen=True)
class Change:
    """One container appeared (before None), changed, or went away (after None)."""

    before: WatchedContainer | None
    after: WatchedContainer | None


@dataclass(frozen=True)
class Update:
    """What one rescan (``full``) or one event changed on one engine, with the snapshot after it."""

    engine: str
    snapshot: Snapshot
    changes: tuple[Change, ...]
    full: bool


@dataclass(frozen=True)
class EngineState:
    listed: bool = False  # the last listing succeeded
    streaming: bool = False  # the events stream is connected
    error: str | None = None
    reconnects: int = 0


@dataclass
class Subscriber:
    """Callbacks run on the inventory's threads, in order per engine; they must be quick.

    ``since(engine)``: the ``since`` (Docker's ``seconds.nanoseconds``) this subscriber needs the
    events stream to resume from, or None; the stream resumes from the earliest one asked for.
    """

    on_update: Callable[[Update], None] | None = None
    on_event: Callable[[str, Mapping[str, Any]], None] | None = None
    on_engine: Callable[[str, EngineState], None] | None = None
    since: Callable[[str], str | None] | None = None


@dataclass
class _Engine:
    client: docker.DockerClient
    lock: threading.RLock = field(default_factory=threading.RLock)
    containers: dict[str, WatchedContainer] = field(default_factory=dict)  # replaced, never mutated
    state: EngineState = field(default_factory=EngineState)
    cut_ns: int = 0  # events older than this are reflected by a rescan already
    stream: Any = None
    streams_opened: int = 0
    thread: threading.Thread | None = None
    # Set when a rescan finds the engine answering while its events stream is down: the stream
    # retries at once instead of sleeping out a backoff that grew while the engine was away.
    wake: threading.Event = field(default_factory=threading.Event)
    # the problems already logged in this outage: one line each, not one per retry (cleared on recovery)
    logged: set[str] = field(default_factory=set)
    marks: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # container id -> list_mark at the last rescan


class Inventory:
    """The selected containers of every engine, kept by one events stream per engine and a rescan."""

    def __init__(
        self,
        clients: Mapping[str, docker.DockerClient],
        names: LabelNames | None = None,
        rescan_s: float = 10.0,
        backoff_cap_s: float = 30.0,
    ) -> None:
        self.names = names or LabelNames()
        self.rescan_s = rescan_s
        self.backoff_cap_s = backoff_cap_s
        self._engines = {name: _Engine(client) for name, client in clients.items()}
        self._subscribers: list[Subscriber] = []
        self._stop = threading.Event()
        self._started = False
        self._rescan_thread: threading.Thread | None = None

    @property
    def selector(self) -> list[str]:
        return list(self.names.selector)

    def client(self, engine: str) -> docker.DockerClient:
        return self._engines[engine].client

    @property
    def engine_names(self) -> list[str]:
        return list(self._engines)

    def subscribe(self, subscriber: Subscriber) -> Subscriber:
        """Subscribe before ``start`` to see the first events (and to have ``since`` honoured)."""
        if subscriber not in self._subscribers:
            self._subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    # -- reading ---------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return Snapshot(
            engines={name: e.containers for name, e in self._engines.items()},
            listed={name: e.state.listed for name, e in self._engines.items()},
        )

    def engine_states(self) -> dict[str, EngineState]:
        return {name: e.state for name, e in self._engines.items()}

    def streams_opened(self) -> dict[str, int]:
        """How many events streams each engine has had opened (one, unless it had to reconnect)."""
        return {name: e.streams_opened for name, e in self._engines.items()}

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Inventory:
        """Lists every engine once (so a snapshot is ready on return), then follows events and rescans."""
        if self._started:
            return self
        self._started = True
        self._stop.clear()
        for name in self._engines:
            self.rescan(name)
        for name, eng in self._engines.items():
            eng.thread = threading.Thread(target=self._follow, args=(name,), name=f"inventory-{name}", daemon=True)
            eng.thread.start()
        self._rescan_thread = threading.Thread(target=self._rescan_loop, name="inventory-rescan", daemon=True)
        self._rescan_thread.start()
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self._stop.set()
        for eng in self._engines.values():
            eng.wake.set()
            stream = eng.stream
            if stream is not None:
                try:
                    stream.close()
                except Exception as exc:  # a dead socket cannot be closed twice; the thread ends anyway
                    log.debug("closing events stream: %s", exc)
        for t in [e.thread for e in self._engines.values()] + [self._rescan_thread]:
            if t is not None:
                t.join(timeout=5)
        self._started = False

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- rescan ---------------------------------------------------------------------------------
    def rescan(self, engine: str | None = None) -> None:
        """List the engine (or all) now; publishes a full update. Safe from any thread."""
        for name in [engine] if engine is not None else list(self._engines):
            self._rescan_one(name)

    def _rescan_loop(self) -> None:
        rounds = 0
        while not self._stop.wait(self.rescan_s):
            rounds += 1
            for name in list(self._engines):
                self._rescan_one(name, thorough=rounds % THOROUGH_EVERY == 0)

    def _rescan_one(self, engine: str, thorough: bool = True) -> None:
        """List the engine and publish a full update.

        ``thorough``: inspect every container. Otherwise (the periodic rescans between thorough
        ones) only those whose list entry changed since the last listing: a fleet's rescan was one
        inspect per container every period. A change the list entry does not show (a restart: still
        running, new start time) reaches the inventory by its event; only a broken events stream
        loses events, and every reconnect rescans thoroughly, as do start and every
        ``THOROUGH_EVERY``-th period.
        """
        eng = self._engines[engine]
        with eng.lock:
            started_ns = time.time_ns()
            try:
                entries = eng.client.api.containers(all=True, filters={"label": self.selector})
            except Exception as exc:
                self._set_state(engine, listed=False, error=f"{engine}: cannot list containers: {exc}")
                return
            old = eng.containers
            found: dict[str, WatchedContainer] = {}
            marks: dict[str, tuple[Any, ...]] = {}
            for entry in entries:
                cid, mark = str(entry.get("Id") or ""), list_mark(entry)
                if not cid or not matches_selector(entry.get("Labels") or {}, self.names.selector):
                    continue
                known = old.get(cid)
                if not thorough and known is not None and eng.marks.get(cid) == mark:
                    found[cid], marks[cid] = known, mark
                    continue
                try:
                    container = eng.client.containers.get(cid)
                except docker.errors.NotFound:
                    continue  # removed since the listing
                except Exception as exc:
                    self._set_state(engine, listed=False, error=f"{engine}: cannot inspect {cid[:12]}: {exc}")
                    return
                found[cid], marks[cid] = WatchedContainer.of(engine, container, self.names), mark
            eng.marks = marks
            changes = [Change(old.get(cid), new) for cid, new in found.items() if old.get(cid) != new]
            changes += [Change(gone, None) for cid, gone in old.items() if cid not in found]
            eng.containers = found
            eng.cut_ns = max(eng.cut_ns, started_ns - _REPLAY_MARGIN_NS)
            self._set_state(engine, listed=True)
            if not eng.state.streaming:
                eng.wake.set()  # the engine is back (a restarted dockerd): reconnect the stream now
            self._publish(Update(engine, self.snapshot(), tuple(changes), full=True))

    # -- events ---------------------------------------------------------------------------------
    def _since(self, engine: str) -> str | None:
        asked = [s for sub in list(self._subscribers) if sub.since is not None and (s := sub.since(engine))]
        return min(asked, key=Decimal) if asked else None

    def _follow(self, engine: str) -> None:
        eng = self._engines[engine]
        backoff = Backoff(0.5, self.backoff_cap_s)
        while not self.stopping:
            try:
                kwargs: dict[str, Any] = {"decode": True, "filters": {"type": "container", "label": self.selector}}
                since = self._since(engine)
                if since is not None:
                    kwargs["since"] = since
                stream = eng.client.events(**kwargs)
                eng.stream = stream
                eng.streams_opened += 1
                if self.stopping:
                    stream.close()
                    return
                self._set_state(engine, streaming=True)
                backoff.reset()
                eng.wake.clear()  # a wake from before this connection is stale
                self._rescan_one(engine)  # anything that changed while the stream was down
                for event in stream:
                    self._on_event(engine, event)
                if self.stopping:
                    return
                raise ConnectionError("event stream ended")
            except Exception as exc:
                if self.stopping:
                    return
                self._set_state(
                    engine,
                    streaming=False,
                    error=f"{engine}: event stream failed: {exc}",
                    reconnects=eng.state.reconnects + 1,
                )
            eng.wake.wait(backoff.next_delay())
            eng.wake.clear()
            if self.stopping:
                return

    def _on_event(self, engine: str, event: Mapping[str, Any]) -> None:
        for sub in list(self._subscribers):  # first, and before any Docker call: lifecycle signals are not delayed
            if sub.on_event is not None:
                self._call(sub.on_event, engine, event)
        action = str(event.get("Action") or event.get("status") or "")
        cid = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
        if not cid or not (action in _STATE_ACTIONS or action == "destroy" or action.startswith("health_status")):
            return
        eng = self._engines[engine]
        with eng.lock:
            time_nano = int(event.get("timeNano") or 0)
            if time_nano and time_nano < eng.cut_ns:
                return  # replayed from before the last rescan, which already saw its effect
            after: WatchedContainer | None = None
            if action != "destroy":
                try:
                    container = eng.client.containers.get(cid)
                except docker.errors.NotFound:
                    container = None
                except Exception as exc:
                    self._set_state(engine, error=f"{engine}: cannot inspect {cid[:12]}: {exc}")
                    return  # the next rescan repairs it
                if container is not None and matches_selector(container.labels or {}, self.names.selector):
                    after = WatchedContainer.of(engine, container, self.names)
            before = eng.containers.get(cid)
            if before == after:
                return
            containers = dict(eng.containers)
            if after is None:
                containers.pop(cid, None)
            else:
                containers[cid] = after
            eng.containers = containers
            self._publish(Update(engine, self.snapshot(), (Change(before, after),), full=False))

    # -- publishing -------------------------------------------------------------------------------
    def _set_state(self, engine: str, **changes: Any) -> None:
        """Record the engine's reachability; subscribers hear of every change."""
        eng = self._engines[engine]
        old = eng.state
        new = eng.state = replace(old, **changes)
        if new.error and new.error not in eng.logged:  # one line per state change, not per retry
            eng.logged.add(new.error)
            log.warning("%s (retrying with backoff)", new.error)
        if eng.logged and (new.listed or new.streaming) and not (old.listed or old.streaming):
            eng.logged.clear()
            log.info("%s: engine reachable again", engine)
        if new != old:
            for sub in list(self._subscribers):
                if sub.on_engine is not None:
                    self._call(sub.on_engine, engine, new)

    def _publish(self, update: Update) -> None:
        for sub in list(self._subscribers):
            if sub.on_update is not None:
                self._call(sub.on_update, update)

    @staticmethod
    def _call(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a subscriber's bug must not stop discovery for the others
            log.exception("inventory subscriber failed")


def shared_or_own(
    inventory: Inventory | None,
    engines: Mapping[str, Any] | None,
    label_selector: Sequence[str],
    service_label: str,
    rescan_s: float = 10.0,
    backoff_cap_s: float = 30.0,
) -> tuple[Inventory, bool]:
    """The inventory a source reads: the watcher's shared one, or (a source used on its own, as in
    tests and scripts) a private one it starts and stops itself. Returns (inventory, owned)."""
    if inventory is not None:
        return inventory, False
    names = LabelNames(selector=tuple(label_selector), service=service_label)
    return Inventory(make_clients(engines), names, rescan_s=rescan_s, backoff_cap_s=backoff_cap_s), True
