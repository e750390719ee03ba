"""Learned failure predictor: P(failure within ``horizon``) per target, from the other detectors' views.

Features, each in [0, 1] so that prior weights read as "how much evidence is this alone":

* ``runway``: ``exp(-eta / runway_scale)`` of the memory runway forecast (1 at the limit);
* ``mem_high``: how far usage is above 80 % of the limit;
* ``errors`` / ``latency``: the CUSUM statistic (in decision intervals, capped at 1) of the
  error-ratio and latency series against the replica's own baseline;
* ``restarts``: restarts and crashes in the last hour (5 or more = 1).

The model is an online logistic regression (:mod:`watcher.detectors.logistic`: river's
``LogisticRegression`` arithmetic, without river's 72 MB of scipy). It starts from **priors**
(intercept -4: a healthy replica has p ~ 2 %; ``runway`` weight 12: a runway under
``runway_scale`` alone gives p > 0.5) so it is useful before any failure was seen. **Labels**
come from what the watcher observes: an OOM kill, a die with a non-zero exit code (not 143, our
own SIGTERM) or ``unhealthy`` turns the target's feature snapshots of the last ``horizon`` into
positives; snapshots that age past the horizon without a failure become negatives. Positives
are weighted ``pos_weight`` because failures are rare.

The sub-detectors (a :class:`~watcher.detectors.forecast.RunwayDetector` and up to two
:class:`~watcher.detectors.change.ChangeDetector`) are built from this rule's params and
checkpointed with it, so the predictor is one rule in a pack with no coupling between rules.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, ClassVar

from pydantic import BaseModel

from watcher.detectors.base import Detector, Observation
from watcher.detectors.change import ChangeDetector
from watcher.detectors.forecast import RunwayDetector
from watcher.detectors.logistic import OnlineLogisticRegression
from watcher.detectors.params import PredictorParams as PredictorParams  # re-exported: its old home
from watcher.model import Lifecycle, LifecycleKind, Predicts, Sample, Target
from watcher.rulepack.schema import AnyRule, DetectorRule, DetectorSpec

DEFAULT_PRIORS: dict[str, float] = {
    "intercept": -4.0,
    "runway": 12.0,
    "mem_high": 3.0,
    "errors": 3.0,
    "latency": 2.0,
    "restarts": 2.0,
}
OUR_SIGTERM = 143
MAX_TARGETS = 10_000


def _sub_rule(rule: AnyRule, suffix: str, kind: str, series: str, params: dict[str, Any]) -> DetectorRule:
    spec = DetectorSpec(kind=kind, series=series, params=params)
    return DetectorRule(id=f"{rule.id}.{suffix}", predicts=rule.predicts or Predicts.CRASH, detector=spec)


class FailurePredictor(Detector):
    """Online logistic regression over per-target features, labelled by observed failures."""

    kind: ClassVar[str] = "predictor"
    params_model: ClassVar[type[BaseModel] | None] = PredictorParams

    def __init__(self, rule: AnyRule) -> None:
        super().__init__(rule)
        spec = getattr(rule, "detector_spec", None)
        assert callable(spec)
        params = spec().parsed_params()
        assert isinstance(params, PredictorParams)
        self.params = params
        limit: float | str = params.limit
        runway_params: dict[str, Any] = {"limit": limit, "within": params.horizon}
        self.runway = RunwayDetector(_sub_rule(rule, "runway", "forecast", params.memory_series, runway_params))
        self.errors = (
            ChangeDetector(_sub_rule(rule, "errors", "change", params.error_series, {}))
            if params.error_series
            else None
        )
        self.latency = (
            ChangeDetector(_sub_rule(rule, "latency", "change", params.latency_series, {}))
            if params.latency_series
            else None
        )
        priors = {**DEFAULT_PRIORS, **self.params.priors}
        self._model: OnlineLogisticRegression | None = None
        self._coefficients = ({n: w for n, w in priors.items() if n != "intercept"}, priors["intercept"])
        self.learned = {"positive": 0, "negative": 0}
        self._targets: dict[str, Target] = {}
        self._usage: dict[str, float] = {}
        self._change: dict[str, dict[str, float]] = {}
        self._restarts: dict[str, deque[float]] = {}
        self._snapshots: dict[str, deque[tuple[float, dict[str, float]]]] = {}
        self._last: dict[str, float] = {}
        self._heard: dict[str, float] = {}  # last signal per target: a replay hint, not checkpointed

    @property
    def model(self) -> OnlineLogisticRegression:
        """The model, built from the coefficients (the priors, or a checkpoint's) on first use."""
        if self._model is None:
            weights, intercept = self._coefficients
            self._model = OnlineLogisticRegression(self.params.lr, intercept, weights)
        return self._model

    def coefficients(self) -> tuple[dict[str, float], float]:
        """(weights, intercept) now, without building the model when it has not been needed yet."""
        if self._model is None:
            return dict(self._coefficients[0]), self._coefficients[1]
        return dict(self._model.weights), float(self._model.intercept)

    # -- features ------------------------------------------------------------------------------
    def features(self, key: str, now: float) -> dict[str, float]:
        eta = self.runway.eta(key, now)
        runway = 0.0 if eta is None or math.isinf(eta) else math.exp(-eta / self.params.runway_scale)
        limit = self.runway.limit_of(key)
        usage = self._usage.get(key)
        mem_high = 0.0
        if limit and usage is not None:
            mem_high = min(1.0, max(0.0, (usage / limit - 0.8) / 0.2))
        change = self._change.get(key, {})
        restarts = self._restarts.get(key, deque())
        while restarts and restarts[0] < now - 3600.0:
            restarts.popleft()
        return {
            "runway": runway,
            "mem_high": mem_high,
            "errors": change.get("errors", 0.0),
            "latency": change.get("latency", 0.0),
            "restarts": min(5, len(restarts)) / 5.0,
        }

    def probability(self, x: dict[str, float]) -> float:
        return self.model.predict_proba(x)

    # -- signals -------------------------------------------------------------------------------
    def on_sample(self, sample: Sample) -> list[Observation]:
        if sample.target is None:
            return []
        key = sample.target.key
        if key not in self._targets and len(self._targets) >= MAX_TARGETS:
            return []
        self._targets[key] = sample.target
        self._heard[key] = sample.ts
        self.runway.on_sample(sample)
        if sample.series == self.params.memory_series and not sample.stale:
            self._usage[key] = sample.value
        for name, det in (("errors", self.errors), ("latency", self.latency)):
            if det is not None:
                for obs in det.on_sample(sample):
                    self._change.setdefault(key, {})[name] = obs.score
        return []

    def on_lifecycle(self, event: Lifecycle) -> list[Observation]:
        key = event.target.key
        self._targets[key] = event.target
        self._heard[key] = event.ts
        self.runway.on_lifecycle(event)
        for det in (self.errors, self.latency):
            if det is not None:
                det.on_lifecycle(event)
        if event.kind in (LifecycleKind.RESTART, LifecycleKind.DIE):
            self._restarts.setdefault(key, deque(maxlen=64)).append(event.ts)
        failed = (
            event.kind is LifecycleKind.OOM
            or (event.kind is LifecycleKind.DIE and event.exit_code not in (None, 0, OUR_SIGTERM))
            or (event.kind is LifecycleKind.HEALTH_STATUS and event.health == "unhealthy")
        )
        if failed:
            self.label_failure(key, event.ts)
        if event.kind in (LifecycleKind.START, LifecycleKind.RESTART, LifecycleKind.DIE, LifecycleKind.OOM):
            self._usage.pop(key, None)
            self._change.pop(key, None)
        return []

    def label_failure(self, key: str, ts: float) -> None:
        """Every snapshot of this target within the horizon before ``ts`` preceded a failure."""
        snaps = self._snapshots.pop(key, deque())
        for at, x in snaps:
            if at >= ts - self.params.horizon:
                self.model.learn(x, True, weight=self.params.pos_weight)
                self.learned["positive"] += 1

    def on_tick(self, now: float) -> list[Observation]:
        out: list[Observation] = []
        self.runway.on_tick(now)
        for key in list(self._targets):
            snaps = self._snapshots.get(key)
            while snaps and snaps[0][0] < now - self.params.horizon:
                _, x = snaps.popleft()
                self.model.learn(x, False)
                self.learned["negative"] += 1
            last = self._last.get(key)
            if last is not None and now - last < self.params.every:
                continue
            self._last[key] = now
            x = self.features(key, now)
            self._snapshots.setdefault(key, deque(maxlen=4096)).append((now, x))
            p = self.probability(x)
            out.append(self._observation(key, now, x, p))
        return out

    def next_tick_at(self, now: float) -> float:
        """For each target still heard from: its next snapshot and the ageing of its oldest
        snapshot into a negative; and the runway's own deadlines.

        A target silent for a whole ``horizon`` has no deadlines: live, the watcher keeps
        snapshotting its frozen features every ``every`` seconds and learning each as a negative;
        replay leaves that to the next tick it makes anyway (the next signal), so a month of
        silence costs one tick instead of hours, and teaches the model nothing about failures."""
        due = self.runway.next_tick_at(now)
        for key in self._targets:
            heard = self._heard.get(key)
            if heard is not None and now - heard > self.params.horizon:
                continue
            snaps = self._snapshots.get(key)
            if snaps:
                due = min(due, snaps[0][0] + self.params.horizon)
            last = self._last.get(key)
            due = min(due, now if last is None else last + self.params.every)
        return due

    def _observation(self, key: str, now: float, x: dict[str, float], p: float) -> Observation:
        active = p >= self.params.threshold
        eta = self.runway.eta(key, now)
        eta_s = eta if eta is not None and eta < self.params.horizon else self.params.horizon
        evidence = ""
        if active:
            weights = self.model.weights
            parts = sorted(((weights.get(n, 0.0) * v, n, v) for n, v in x.items() if v > 0), reverse=True)[:3]
            why = ", ".join(f"{n}={v:.2f}" for _, n, v in parts)
            evidence = f"p={p:.2f} of a failure within {self.params.horizon:.0f}s ({why})"
        return Observation(self._targets[key], active, now, evidence=evidence, score=p, eta_s=eta_s if active else None)

    # -- checkpoint ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        weights, intercept = self.coefficients()
        return {
            "weights": weights,
            "intercept": intercept,
            "learned": dict(self.learned),
            "runway": self.runway.state(),
            "errors": self.errors.state() if self.errors else None,
            "latency": self.latency.state() if self.latency else None,
            "usage": dict(self._usage),
            "change": {k: dict(v) for k, v in self._change.items()},
            "restarts": {k: list(v) for k, v in self._restarts.items()},
            "snapshots": {k: [[t, x] for t, x in v] for k, v in self._snapshots.items()},
            "last": dict(self._last),
            "targets": list(self._targets),
        }

    def restore(self, state: dict[str, Any], targets: dict[str, Target]) -> None:
        weights = {str(name): float(w) for name, w in state.get("weights", {}).items()}
        intercept = float(state.get("intercept", {**DEFAULT_PRIORS, **self.params.priors}["intercept"]))
        self._model = None  # rebuilt from these on first use
        self._coefficients = (weights, intercept)
        self.learned.update({k: int(v) for k, v in state.get("learned", {}).items()})
        self.runway.restore(state.get("runway") or {}, targets)
        if self.errors is not None:
            self.errors.restore(state.get("errors") or {}, targets)
        if self.latency is not None:
            self.latency.restore(state.get("latency") or {}, targets)
        known = set(targets)
        self._targets.update({k: targets[k] for k in state.get("targets", []) if k in targets})
        self._usage = {k: float(v) for k, v in state.get("usage", {}).items() if k in known}
        self._change = {
            k: {n: float(s) for n, s in v.items()} for k, v in state.get("change", {}).items() if k in known
        }
        self._restarts = {
            k: deque((float(t) for t in v), maxlen=64) for k, v in state.get("restarts", {}).items() if k in known
        }
        self._snapshots = {
            k: deque(((float(t), {n: float(f) for n, f in x.items()}) for t, x in v), maxlen=4096)
            for k, v in state.get("snapshots", {}).items()
            if k in known
        }
        self._last = {k: float(v) for k, v in state.get("last", {}).items() if k in known}
