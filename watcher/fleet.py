"""Who the replicas are, how the load balancer addresses them, and whether each is serving.

The policy needs a view of the whole service (to never drain the last healthy replica) and the
actuators need each replica's load-balancer address and model. Both come from the containers'
labels (``watcher.service``, ``watcher.upstream``, ``watcher.model``) as the inventory knows them:
this is a view over :class:`watcher.inventory.Inventory`, which lists and follows every engine.
"""

from __future__ import annotations

from collections.abc import Callable

from watcher.actions.base import Replica
from watcher.inventory import Inventory, WatchedContainer
from watcher.policy import ReplicaView


def replica_of(container: WatchedContainer) -> Replica | None:
    """What the actuators need; None for a container without an upstream or model label."""
    if not (container.upstream and container.model):
        return None
    upstream = container.upstream
    return Replica(
        target=container.target,
        upstream=upstream,
        rest_url=f"http://{upstream}",
        model=container.model,
        protocol=container.protocol,
    )


class Fleet:
    def __init__(self, inventory: Inventory, weight_of: Callable[[Replica], int] | None = None) -> None:
        self.inventory = inventory
        self.weight_of = weight_of
        self._views: dict[str, ReplicaView] = {}

    def refresh(self) -> None:
        """Views of every known replica (stopped ones too); serving also asks the load balancer.

        The replicas of an engine that does not answer are kept, as unknown (never serving): the
        rails must count them as unavailable, not forget them. A container name seen on more than
        one engine within a service, running on at most one reachable engine, is one replica that
        moved (its old engine still lists it stopped, or is down): its views share one identity, so
        capacity counts it once. Two running copies on reachable engines are two replicas (the same
        Compose project deployed on two hosts names its containers alike)."""
        snapshot = self.inventory.snapshot()
        known = list(snapshot.current())
        unknown = list(snapshot.unknown())
        live: dict[tuple[str | None, str], int] = {}
        for c in known:
            if c.running:
                live[(c.target.service, c.target.container)] = live.get((c.target.service, c.target.container), 0) + 1
        views: dict[str, ReplicaView] = {}
        for c, reachable in [(c, True) for c in known] + [(c, False) for c in unknown]:
            moved_once = live.get((c.target.service, c.target.container), 0) <= 1
            identity = f"{c.target.service}/{c.target.container}" if moved_once else c.key
            if not reachable:
                views[c.key] = ReplicaView(c.key, c.target.service, False, unknown=True, replica=identity)
                continue
            serving = c.serving
            replica = replica_of(c)
            if replica is not None and serving and self.weight_of is not None:
                try:
                    serving = self.weight_of(replica) > 0
                except Exception:
                    serving = False
            views[c.key] = ReplicaView(c.key, c.target.service, serving, replica=identity)
        self._views = views

    def replica(self, key: str) -> Replica | None:
        """The replica now named ``key`` (``engine/name``); an unknown key makes the inventory look again."""
        container = self.inventory.snapshot().by_key(key)
        if container is None:
            self.inventory.rescan()
            container = self.inventory.snapshot().by_key(key)
        return replica_of(container) if container is not None else None

    def views(self, refresh: bool = True) -> dict[str, ReplicaView]:
        if refresh:
            self.refresh()
        return dict(self._views)
