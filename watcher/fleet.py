"""Who the replicas are, how the load balancer addresses them, and whether each is serving.

The policy needs a view of the whole service (to never drain the last healthy replica) and the
actuators need each replica's load-balancer address and model. Both come from the containers'
labels (``watcher.service``, ``watcher.upstream``, ``watcher.model``), read from every engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import docker

from watcher.actions.base import Replica
from watcher.model import Target
from watcher.policy import ReplicaView
from watcher.sources.docker_logs import matches_selector


class Fleet:
    def __init__(
        self,
        clients: Mapping[str, docker.DockerClient],
        label_selector: Sequence[str] = ("watcher.enable=true",),
        weight_of: Callable[[Replica], int] | None = None,
        service_label: str = "watcher.service",
        upstream_label: str = "watcher.upstream",
        model_label: str = "watcher.model",
    ) -> None:
        self.clients = dict(clients)
        self.label_selector = list(label_selector)
        self.weight_of = weight_of
        self.service_label = service_label
        self.upstream_label = upstream_label
        self.model_label = model_label
        self._replicas: dict[str, Replica] = {}
        self._views: dict[str, ReplicaView] = {}

    def refresh(self) -> None:
        replicas: dict[str, Replica] = {}
        views: dict[str, ReplicaView] = {}
        for engine, client in self.clients.items():
            try:
                containers = client.containers.list(all=True)
            except docker.errors.DockerException:
                continue
            for c in containers:
                labels = c.labels or {}
                if not matches_selector(labels, self.label_selector):
                    continue
                upstream = labels.get(self.upstream_label)
                model = labels.get(self.model_label)
                service = labels.get(self.service_label)
                target = Target(c.name, engine=engine, service=service)
                state = c.attrs.get("State", {})
                running = bool(state.get("Running"))
                health = (state.get("Health") or {}).get("Status")
                serving = running and health != "unhealthy"
                if upstream and model:
                    replica = Replica(target=target, upstream=upstream, rest_url=f"http://{upstream}", model=model)
                    replicas[target.key] = replica
                    if serving and self.weight_of is not None:
                        try:
                            serving = self.weight_of(replica) > 0
                        except Exception:
                            serving = False
                views[target.key] = ReplicaView(target.key, service, serving)
        self._replicas, self._views = replicas, views

    def replica(self, key: str) -> Replica | None:
        if key not in self._replicas:
            self.refresh()
        return self._replicas.get(key)

    def views(self, refresh: bool = True) -> dict[str, ReplicaView]:
        if refresh:
            self.refresh()
        return dict(self._views)
