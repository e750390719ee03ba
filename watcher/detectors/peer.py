"""Peer comparison: the replica that diverges from its siblings behind the same load balancer.

Why peers and not history: replicas of one service run the same model on the same traffic mix, so
they are each other's baseline, and that baseline exists from the first scrape: the comparison
works when every replica is new (after a deploy), exactly when a per-replica baseline does not.

Robust by construction: a replica's robust z is ``(x - median) / max(1.4826*MAD, rel_floor*|median|,
min_deviation)`` over the service's fresh values, so one sick replica cannot drag the reference
with it, and near-identical healthy replicas (MAD ~ 0) do not turn noise into findings. With fewer
than ``min_peers`` siblings there is no verdict: between two replicas, which one is odd?

Peer comparison is a cross-section, so it is evaluated on ``on_tick`` after the samples of a scrape
have arrived (only for services that got new samples). That is also what makes it equal to the
fleet-wide :class:`~watcher.detectors.vectorized.PeerBatch`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from watcher.detectors.base import Detector, DetectorConfigError, Observation
from watcher.detectors.params import PeerParams as PeerParams  # re-exported: its old home
from watcher.detectors.vectorized import peer_scores
from watcher.model import Lifecycle, LifecycleKind, Sample, Target
from watcher.rulepack.schema import AnyRule

MAX_REPLICAS_PER_SERVICE = 1_000  # a flood of made-up targets cannot grow memory without bound


class PeerDetector(Detector):
    """Per service: robust z of each replica's latest value against the service's median."""

    kind: ClassVar[str] = "peer"
    params_model: ClassVar[type[BaseModel] | None] = PeerParams

    def __init__(self, rule: AnyRule) -> None:
        super().__init__(rule)
        spec = getattr(rule, "detector_spec", None)
        if not callable(spec) or not spec().series:
            raise DetectorConfigError(f"rule {rule.id!r}: peer needs detector.series")
        ds = spec()
        params = ds.parsed_params()
        assert isinstance(params, PeerParams)
        self.params = params
        self.series: str = ds.series
        self._values: dict[str, dict[str, tuple[float, float]]] = {}  # service -> key -> (ts, value)
        self._targets: dict[str, Target] = {}
        self._dirty: set[str] = set()
        self._active: dict[str, bool] = {}

    @staticmethod
    def service_of(target: Target) -> str:
        """Replicas without a service are compared with nobody (their own group of one)."""
        return target.service if target.service is not None else f"\0{target.key}"

    def on_sample(self, sample: Sample) -> list[Observation]:
        if sample.series != self.series or sample.target is None:
            return []
        service = self.service_of(sample.target)
        group = self._values.setdefault(service, {})
        key = sample.target.key
        if sample.stale or not np.isfinite(sample.value):
            group.pop(key, None)
        elif key in group or len(group) < MAX_REPLICAS_PER_SERVICE:
            group[key] = (sample.ts, sample.value)
            self._targets[key] = sample.target
        self._dirty.add(service)
        return []

    def on_lifecycle(self, event: Lifecycle) -> list[Observation]:
        """A container that died or was removed no longer speaks for itself: drop its value."""
        if event.kind in (LifecycleKind.DIE, LifecycleKind.STOP, LifecycleKind.DESTROY, LifecycleKind.OOM):
            group = self._values.get(self.service_of(event.target))
            if group is not None and group.pop(event.target.key, None) is not None:
                self._dirty.add(self.service_of(event.target))
        return []

    def on_tick(self, now: float) -> list[Observation]:
        out: list[Observation] = []
        for service in sorted(self._dirty):
            out.extend(self._evaluate(service, now))
        self._dirty.clear()
        return out

    def next_tick_at(self, now: float) -> float:
        """Only a service with new values is evaluated (stale values are dropped then too)."""
        return now if self._dirty else math.inf

    def _evaluate(self, service: str, now: float) -> list[Observation]:
        group = self._values.get(service, {})
        out: list[Observation] = []
        for key in [k for k, (ts, _) in group.items() if ts < now - self.params.stale_after]:
            del group[key]
            if self._active.pop(key, False):
                out.append(Observation(self._targets[key], False, now, evidence=f"{self.series} went stale"))
        keys = sorted(group)
        if not keys:
            self._values.pop(service, None)
            return out
        values = np.array([[group[k][1] for k in keys]], dtype=np.float64)
        z, ok = peer_scores(
            values,
            np.ones_like(values, dtype=bool),
            rel_floor=self.params.rel_floor,
            min_deviation=self.params.min_deviation,
            min_peers=self.params.min_peers,
        )
        for i, key in enumerate(keys):
            zi = float(z[0, i])
            if not bool(ok[0, i]):
                active = False
            else:
                active = abs(zi) > self.params.k if self.params.direction == "both" else zi > self.params.k
            was = self._active.get(key, False)
            self._active[key] = active
            if not active and not was and not bool(ok[0, i]):
                continue
            evidence = ""
            if active:
                median = float(np.median(values))
                evidence = (
                    f"{self.series} = {group[key][1]:.4g} vs median {median:.4g} of {len(keys)} replicas "
                    f"of {service} (robust z {zi:.1f} > {self.params.k:g})"
                )
            score = min(1.0, abs(zi) / (2 * self.params.k)) if ok[0, i] else 0.0
            out.append(Observation(self._targets[key], active, now, evidence=evidence, score=score))
        return out

    def state(self) -> dict[str, Any]:
        return {
            "values": {s: {k: list(v) for k, v in g.items()} for s, g in self._values.items()},
            "dirty": sorted(self._dirty),
            "active": dict(self._active),
        }

    def restore(self, state: dict[str, Any], targets: dict[str, Target]) -> None:
        for service, group in state.get("values", {}).items():
            for key, (ts, v) in group.items():
                if key in targets:
                    self._targets[key] = targets[key]
                    self._values.setdefault(service, {})[key] = (float(ts), float(v))
        self._dirty.update(s for s in state.get("dirty", []) if s in self._values)
        self._active.update({k: bool(a) for k, a in state.get("active", {}).items() if k in targets})
