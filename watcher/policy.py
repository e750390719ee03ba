"""Guard rails: turn a finding into a plan, or refuse and say why. Persisted, so a restart keeps them.

Everything that stops the watcher from making an outage worse lives here and nowhere else:
freshness (act only on fresh, unresolved findings), silences, pause, cooldown per replica and
rule, one incident per replica at a time, a fleet-wide rate limit, capacity (never drain below
``min_healthy`` serving replicas, never more than ``max_unavailable`` out of a service — so never
the last healthy replica — counted per service across every engine, with a replica whose engine does
not answer, or with an incident in progress, counted as unavailable), and the restart budget with
exponential backoff and a circuit breaker that stops acting and escalates once (the restart-forever
loop users hate in docker-autoheal).

Drain before you know why: a finding whose ETA is shorter than a restart takes (measured per
replica from the journal, else ``restart_takes_s``) is drained first, always; and when the restart
itself is refused (backoff, budget, circuit breaker) but draining is allowed (capacity, rate limit,
pause and silences still decide), the replica is drained at once and held with a critical alert
instead of being left to fail in rotation while the backoff runs.

A refusal that can lapse says when (``Decision.retry_at``): the executor decides a still-active
finding again then (:mod:`watcher.playbook.retries`), so a replica refused during its backoff is not
left sick because its rule already fired. Pause, staleness and a resolved finding never lapse by time.

The policy is pure over its inputs (finding, fleet view, time) plus its own persisted state:
cooldowns and budgets held in memory would be forgotten by exactly the restart that needs them.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

from watcher.model import Finding
from watcher.playbook.base import Step
from watcher.playbook.checks import Verify, WaitAvailable
from watcher.playbook.container import Recreate, Restart
from watcher.playbook.notify import SendAlert
from watcher.playbook.plan import Plan
from watcher.playbook.traffic import AwaitResolved, Drain, Hold, Restore, SetWeight, WaitIdle
from watcher.rulepack.schema import (
    AlertAction,
    AnyRule,
    Defaults,
    DrainAction,
    HoldAction,
    RecreateAction,
    RestartAction,
    VerifyAction,
    WeightAction,
)
from watcher.store import Store, StoreError

log = logging.getLogger("watcher")

STATE_SCOPE = "guard"
STATE_KEY = "state"


@dataclass
class GuardConfig:
    fresh_s: float = 120.0  # a finding older than this starts nothing
    backoff_base_s: float = 30.0  # wait after the first restart in the window; doubles each time
    global_actions_per_minute: int = 10
    wait_available_s: float = 60.0
    max_hold_s: float = 600.0  # a weight-only plan keeps the weight until its finding resolves, at most this long
    # how long a restart takes (restart to serving) when the journal has none measured for the replica:
    # a finding whose ETA is shorter cannot wait for one, so it is drained at once (drain before you know why)
    restart_takes_s: float = 10.0
    dry_run: bool = False


@dataclass(frozen=True)
class ReplicaView:
    """What the policy needs to know about one replica right now."""

    key: str
    service: str | None
    serving: bool  # in rotation, running, not unhealthy
    # its engine is unreachable: state unknown, so never acted on and counted as unavailable by the rails
    unknown: bool = False
    # which replica of the service this is, across engines ("" = its key): a replica moved to another
    # engine keeps its name, and its old and new views then share it, so capacity counts it once
    replica: str = ""

    @property
    def identity(self) -> str:
        return self.replica or self.key


@dataclass(frozen=True)
class Decision:
    plan: Plan | None  # None: refused (see reason)
    reason: str = ""
    escalate: str | None = None  # an alert to send once (breaker tripped, capacity exhausted)
    dry_run: bool = False
    # a refusal that can lapse: decide the finding again at this time if it is still active (None: it cannot,
    # or not while the finding is fresh). ``now`` means "on the next re-check" (capacity, a running incident).
    retry_at: float | None = None


@dataclass
class Silence:
    matchers: dict[str, str]  # keys: target, service, rule, predicts; values may use * globs
    until: float
    comment: str = ""

    def matches(self, labels: dict[str, str], now: float) -> bool:
        if now >= self.until:
            return False
        return all(fnmatch.fnmatchcase(labels.get(k, ""), v) for k, v in self.matchers.items())


def plan_steps(rule: AnyRule, wait_available_s: float, max_hold_s: float = 600.0) -> Plan:
    """The rule's ``then`` as ordered steps; a plan that takes traffic away ends by restoring it,
    unless it says ``hold: drained``.

    A plan that only moves traffic (``{weight: 0}``, ``drain``) fixes nothing by itself, so it keeps the
    weight until the rule's finding resolves (at most ``max_hold_s``) before restoring: restoring at
    once would hand the sick replica its traffic back a moment later."""
    steps: list[Step] = []
    changes_weight = False
    holds = False
    fixes = False
    for action in rule.then:
        if isinstance(action, DrainAction):
            steps.append(Drain())
            steps.append(WaitIdle(settle_s=action.drain.wait, timeout_s=action.drain.max_inflight_wait))
            changes_weight = True
        elif isinstance(action, WeightAction):
            steps.append(SetWeight(weight=action.weight))
            changes_weight = True
        elif isinstance(action, RestartAction):
            steps.append(Restart(stop_timeout_s=action.restart.stop_timeout))
            steps.append(WaitAvailable(timeout_s=wait_available_s))
            fixes = True
        elif isinstance(action, RecreateAction):
            steps.append(Recreate())
            steps.append(WaitAvailable(timeout_s=wait_available_s))
            fixes = True
        elif isinstance(action, VerifyAction):
            steps.append(Verify(settle_s=action.verify.settle))
        elif isinstance(action, AlertAction):
            severity = action.alert.severity or rule.severity
            steps.append(
                SendAlert(
                    severity=severity.value,
                    annotations=dict(action.alert.annotations),
                    receiver=action.alert.receiver or None,
                )
            )
        elif isinstance(action, HoldAction):
            holds = True
    if holds:
        steps.append(Hold())
    elif changes_weight:
        if not fixes:
            steps.append(AwaitResolved(timeout_s=max_hold_s))
        steps.append(Restore())
    return Plan(steps)


def hold_steps() -> Plan:
    """What a finding that comes back within the cooldown gets: out of rotation, kept there, alert.
    The first plan did not fix the replica, and repeating it is what the cooldown forbids; leaving
    a replica that keeps failing in rotation is worse than holding it (capacity rails still apply)."""
    return Plan([Drain(), Hold()])


P = ParamSpec("P")
R = TypeVar("R")


def _locked(method: Callable[Concatenate[Policy, P], R]) -> Callable[Concatenate[Policy, P], R]:
    """Run under the policy's lock. The decision thread owns the policy, but playbook workers
    record restarts and the store write iterates the state: without the lock a save could see a
    dict mid-update (and fail), or a restart counted on a worker be lost to a concurrent save."""

    @functools.wraps(method)
    def wrapper(policy: Policy, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with policy._lock:
            return method(policy, *args, **kwargs)

    return wrapper


class Policy:
    def __init__(self, store: Store | None, config: GuardConfig | None = None) -> None:
        self._lock = threading.RLock()
        self.store = store
        self.config = config or GuardConfig()
        self.last_action: dict[str, float] = {}
        self.restarts: dict[str, list[float]] = {}
        self.breakers: dict[str, dict[str, Any]] = {}
        self.actions: list[float] = []
        self.silences: list[Silence] = []
        self.paused = False
        self.busy: set[str] = set()  # targets with an incident in progress (owned by the executor)
        if store is not None:
            self._load(store.get_state(STATE_SCOPE, STATE_KEY) or {})

    # -- persistence ---------------------------------------------------------------------------
    def _load(self, data: dict[str, Any]) -> None:
        self.last_action = {str(k): float(v) for k, v in data.get("last_action", {}).items()}
        self.restarts = {str(k): [float(t) for t in v] for k, v in data.get("restarts", {}).items()}
        self.breakers = dict(data.get("breakers", {}))
        self.actions = [float(t) for t in data.get("actions", [])]
        self.silences = [
            Silence(dict(s["matchers"]), float(s["until"]), s.get("comment", "")) for s in data.get("silences", [])
        ]
        self.paused = bool(data.get("paused", False))
        self.config.dry_run = bool(data.get("dry_run", self.config.dry_run))

    @_locked
    def save(self, now: float = 0.0) -> None:
        if self.store is None:
            return
        data = {
            "last_action": self.last_action,
            "restarts": self.restarts,
            "breakers": self.breakers,
            "actions": self.actions[-1000:],
            "silences": [{"matchers": s.matchers, "until": s.until, "comment": s.comment} for s in self.silences],
            "paused": self.paused,
            "dry_run": self.config.dry_run,
        }
        try:
            self.store.put_state(STATE_SCOPE, STATE_KEY, data, now)
        except StoreError as exc:  # the rails hold in memory; the next save writes them whole
            log.warning("guard-rail state not saved", extra={"fields": {"error": str(exc)}})

    # -- operator controls -----------------------------------------------------------------------
    @_locked
    def silence(self, matchers: dict[str, str], until: float, comment: str = "", now: float = 0.0) -> None:
        self.silences = [s for s in self.silences if s.until > now] + [Silence(matchers, until, comment)]
        self.save(now)

    @_locked
    def set_paused(self, paused: bool, now: float = 0.0) -> None:
        self.paused = paused
        self.save(now)

    @_locked
    def set_dry_run(self, dry_run: bool, now: float = 0.0) -> None:
        self.config.dry_run = dry_run
        self.save(now)

    # -- the decision --------------------------------------------------------------------------
    @_locked
    def decide(
        self,
        finding: Finding,
        rule: AnyRule,
        defaults: Defaults,
        fleet: dict[str, ReplicaView],
        now: float,
        restart_takes_s: float | None = None,
    ) -> Decision:
        """A plan, or a refusal that says why and whether it can lapse while the finding is still fresh.
        ``restart_takes_s``: this replica's measured restart duration (None: the configured one)."""
        takes = self.config.restart_takes_s if restart_takes_s is None else restart_takes_s
        decision = self._decide(finding, rule, defaults, fleet, now, takes)
        if decision.retry_at is not None and decision.retry_at - finding.ts > self.config.fresh_s:
            return replace(decision, retry_at=None)  # stale by then: it would start nothing
        return decision

    def _decide(
        self,
        finding: Finding,
        rule: AnyRule,
        defaults: Defaults,
        fleet: dict[str, ReplicaView],
        now: float,
        restart_takes_s: float,
    ) -> Decision:
        key = finding.target.key
        labels = {
            "target": key,
            "container": finding.target.container,
            "service": finding.target.service or "",
            "rule": finding.rule_id,
            "predicts": finding.predicts.value,
        }
        if finding.resolved:
            return Decision(None, "finding is resolved")
        if now - finding.ts > self.config.fresh_s:
            return Decision(None, f"finding is {now - finding.ts:.0f}s old (fresh for {self.config.fresh_s:.0f}s)")
        plan = plan_steps(rule, self.config.wait_available_s, self.config.max_hold_s)
        if not plan:
            return Decision(None, "rule has no actions")
        # cannot wait for a restart: the drain comes first, and a refused restart does not keep it in rotation
        urgent = plan.restarts and finding.eta_s is not None and finding.eta_s < restart_takes_s
        if urgent and not isinstance(plan[0], Drain):
            plan = Plan([Drain(), *plan])
        blocked: Decision | None = None  # the restart is refused; an urgent finding may still be drained
        if self.paused:
            return Decision(None, "watcher is paused")
        for s in self.silences:
            if s.matches(labels, now):
                return Decision(None, f"silenced until {s.until:.0f} ({s.comment})", retry_at=s.until)
        breaker = self.breakers.get(key)
        if breaker is not None:
            closes_at = float(breaker["tripped_at"]) + defaults.max_restarts.per
            if now < closes_at:
                blocked = Decision(None, "circuit breaker open: restart budget exhausted", retry_at=closes_at)
                if not urgent:
                    return blocked
            else:
                del self.breakers[key]
        if key in self.busy:
            return Decision(None, "an incident is already in progress for this replica", retry_at=now)
        me = fleet.get(key)
        if me is not None and me.unknown:  # decided again when the engine answers (while the finding is fresh)
            return Decision(None, f"engine {finding.target.engine} unreachable: replica state unknown", retry_at=now)
        last = self.last_action.get(f"{key}|{finding.rule_id}")
        reason = "planned"
        if last is not None and now - last < defaults.cooldown:
            cooling = f"cooldown: acted {now - last:.0f}s ago (cooldown {defaults.cooldown:.0f}s)"
            if not plan.takes_capacity:
                return Decision(None, cooling, retry_at=last + defaults.cooldown)
            plan, reason = hold_steps(), f"recurred within the {cooling}: holding drained"
        recent = [t for t in self.actions if now - t < 60.0]
        if plan.changes_fleet and len(recent) >= self.config.global_actions_per_minute:
            return Decision(
                None, f"fleet rate limit: {len(recent)} actions in the last minute", retry_at=min(recent) + 60.0
            )
        if plan.takes_capacity:
            refusal = self._capacity(key, finding.target.service, defaults, fleet)
            if refusal is not None:
                return Decision(None, refusal, escalate=f"{key}: {refusal}", retry_at=now)
        if plan.restarts and blocked is None:
            blocked = self._restart_refusal(key, defaults, now)
        if blocked is not None:
            if not urgent:
                return blocked
            assert finding.eta_s is not None
            why = (
                f"{blocked.reason}; {finding.predicts.value} expected in {finding.eta_s:.0f}s, sooner than a"
                f" restart takes ({restart_takes_s:.0f}s): drained now, held drained"
            )
            return Decision(Plan([Drain(), Hold(why=why)]), why, dry_run=self.config.dry_run)
        return Decision(plan, reason, dry_run=self.config.dry_run)

    def _restart_refusal(self, key: str, defaults: Defaults, now: float) -> Decision | None:
        """The restart budget (tripping the circuit breaker when it is spent) and the backoff."""
        window = [t for t in self.restarts.get(key, []) if now - t < defaults.max_restarts.per]
        if len(window) >= defaults.max_restarts.count:
            self.breakers[key] = {"tripped_at": now, "alerted": True}
            self.save(now)
            reason = (
                f"restart budget exhausted ({len(window)} restarts in {defaults.max_restarts.per:.0f}s):"
                " circuit breaker tripped"
            )
            return Decision(None, reason, escalate=f"{key}: {reason}", retry_at=now + defaults.max_restarts.per)
        if window:
            wait = self.config.backoff_base_s * 2 ** (len(window) - 1)
            if now - window[-1] < wait:
                return Decision(
                    None,
                    f"backing off: next restart allowed {wait - (now - window[-1]):.0f}s from now",
                    retry_at=window[-1] + wait,
                )
        return None

    def _capacity(self, key: str, service: str | None, defaults: Defaults, fleet: dict[str, ReplicaView]) -> str | None:
        """Per service, across every engine. Counted as unavailable: a replica out of rotation, one
        whose engine is unreachable (unknown: it may be down), and one with an incident in progress
        (its plan may take it out at any step: a second finding decided before the first plan's drain
        ran must not see it serving). A replica seen on two engines (moved) counts once."""
        if service is None:
            return None  # a lone container: nothing to keep serving beside it
        peers = [r for r in fleet.values() if r.service == service]
        if not peers:
            return None
        serving: dict[str, bool] = {}  # replica identity -> in rotation on some engine
        for r in peers:
            serving[r.identity] = serving.get(r.identity, False) or (r.serving and r.key not in self.busy)
        me = fleet.get(key)
        mine = me.identity if me is not None else key
        if me is not None and not serving[mine]:
            return None  # already out of rotation (down, unhealthy): taking it out removes nothing
        serving_after = [i for i, up in serving.items() if up and i != mine]
        unavailable_after = [i for i, up in serving.items() if not up and i != mine] + [mine]
        min_healthy = max(defaults.min_healthy, 1)
        if len(serving_after) < min_healthy:
            return f"would leave {len(serving_after)} serving replica(s) in {service} (min_healthy {min_healthy})"
        if len(unavailable_after) > defaults.max_unavailable:
            return (
                f"would make {len(unavailable_after)} replica(s) of {service} unavailable"
                f" (max_unavailable {defaults.max_unavailable})"
            )
        return None

    # -- bookkeeping by the executor -----------------------------------------------------------
    @_locked
    def record_action(self, key: str, rule_id: str, now: float, changes_fleet: bool = True) -> None:
        """Stamp the rule's cooldown; a plan that changes the fleet also counts for the rate limit."""
        self.last_action[f"{key}|{rule_id}"] = now
        self.actions = [t for t in self.actions if now - t < 3600.0] + ([now] if changes_fleet else [])
        self.save(now)

    @_locked
    def forget_action(self, key: str, rule_id: str, at: float) -> None:
        """Take back the cooldown stamp ``record_action`` set at ``at``: the plan changed nothing (the
        load balancer refused its first change), so the next finding may try it again instead of
        being held for a cooldown earned by nothing. A later stamp is kept; the fleet rate limit
        keeps counting the attempt, so a storm of refused attempts stays bounded."""
        stamp = f"{key}|{rule_id}"
        if abs(self.last_action.get(stamp, float("nan")) - at) < 1e-3:
            del self.last_action[stamp]
            self.save(at)

    @_locked
    def record_restart(self, key: str, now: float, window_s: float) -> None:
        """Counted before the restart runs: a crash mid-restart must not give the budget back."""
        self.restarts[key] = [t for t in self.restarts.get(key, []) if now - t < window_s] + [now]
        self.save(now)
