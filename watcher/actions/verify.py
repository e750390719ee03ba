"""Verify that a restarted replica serves the right model, correctly, before it gets traffic back.

A container that is "running" proves nothing: the server may still be loading, may have failed
to load, or may have come back serving an older version (a rolled-back volume, a pinned config).
So restoring weight is gated on four checks:

1. the model is AVAILABLE (:meth:`Verifier.wait_available`), waiting for it boundedly;
2. the version served is the expected one (:meth:`Verifier.expected_version`: pinned in config,
   else the highest version folder in the model repository, as TF Serving itself would pick, else
   the version served before the incident);
3. a smoke prediction: the stored ``<repo>/<model>/<version>/smoke.json`` instances, posted to
   the *unversioned* endpoint (what clients call), give the stored predictions within a tolerance;
4. no load attempt failed meanwhile (a version that ended with an error).

Afterwards :meth:`Verifier.settle` watches an error ratio the executor supplies (e.g. from
Prometheus) return to its baseline and stay there for a settle period.

This module is the protocol-independent part. Each replica names its serving protocol (the
``watcher.protocol`` label, default TF Serving REST); the adapters in :mod:`watcher.actions.protocols` only
say how to read readiness, version states and predictions in that protocol's words. A protocol that
cannot report versions (KServe V1) is verified by ready + smoke prediction; a replica whose protocol
is unknown, or that offers nothing to compare against, is *not verifiable*
(:class:`~watcher.actions.protocols.CannotVerifyError`): it stays drained and a human is told.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from watcher.actions.base import ActionError, Replica, http_session
from watcher.actions.protocols import ADAPTERS, ServingProtocol, protocol_name
from watcher.actions.protocols.base import CannotVerifyError, VersionState, highest_available, version_key

__all__ = ["CannotVerifyError", "SmokeFileMissingError", "Verifier", "VersionState", "predictions_match"]


class SmokeFileMissingError(CannotVerifyError):
    """No stored smoke input/output for this model version: the smoke check cannot be run."""


def predictions_match(expected: Any, got: Any, rel_tol: float, abs_tol: float) -> bool:
    """Structural equality with numeric tolerance (nested lists, dicts of named outputs)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return bool(expected == got)
    if isinstance(expected, int | float) and isinstance(got, int | float):
        return bool(math.isclose(float(expected), float(got), rel_tol=rel_tol, abs_tol=abs_tol))
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(
            predictions_match(e, g, rel_tol, abs_tol) for e, g in zip(expected, got, strict=True)
        )
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(
            predictions_match(expected[k], got[k], rel_tol, abs_tol) for k in expected
        )
    return bool(expected == got)


class Verifier:
    """The model checks, over the replica's protocol adapter, with an injectable clock.

    Adapters (see :class:`~watcher.actions.protocols.ServingProtocol`) are bounded by ``timeout_s`` per
    request and hold no state between calls, so one verifier may be used from several worker
    threads at once. ``protocols`` replaces the adapters by name (tests, a TorchServe with another
    management port); by default every adapter in :data:`watcher.actions.protocols.ADAPTERS` is available.
    """

    def __init__(
        self,
        timeout_s: float = 2.0,
        *,
        poll_s: float = 0.25,
        rel_tol: float = 1e-5,
        abs_tol: float = 1e-6,
        session: requests.Session | None = None,
        protocols: Mapping[str, ServingProtocol] | None = None,
        protocol_label: str = "watcher.protocol",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        self.protocol_label = protocol_label
        shared = session or http_session()
        self.protocols: dict[str, ServingProtocol] = {
            name: cls(timeout_s, session=shared) for name, cls in ADAPTERS.items()
        }
        self.protocols.update(protocols or {})
        self._clock = clock
        self._sleep = sleep

    def adapter(self, replica: Replica) -> ServingProtocol:
        """The replica's protocol adapter; :class:`CannotVerifyError` (one line: the container, the
        label value, the allowed values) when its label names no adapter."""
        name = protocol_name(replica.target.container, replica.protocol, self.protocol_label)
        return self.protocols[name]

    def versions(self, replica: Replica) -> list[VersionState] | None:
        """The model's version states; None when the protocol cannot report versions."""
        return self.adapter(replica).versions(replica)

    def predict(self, replica: Replica, instances: list[Any]) -> Any:
        return self.adapter(replica).predict(replica, instances)

    # -- status ---------------------------------------------------------------------------------
    @staticmethod
    def _load_error(entries: list[VersionState]) -> str | None:
        for e in sorted(entries, key=lambda e: version_key(e.version), reverse=True):
            if e.state == "END" and e.error:
                return f"version {e.version}: {e.error}".strip()
        return None

    def served_version(self, replica: Replica) -> str | None:
        """The highest AVAILABLE version, or None (nothing available, the replica is down, or the
        protocol cannot say)."""
        try:
            return highest_available(self.versions(replica) or [])
        except ActionError:
            return None

    def reports_versions(self, replica: Replica) -> bool:
        """Whether the replica's protocol says which version it serves (raises when it is unknown)."""
        return self.versions(replica) is not None

    def load_failed(self, replica: Replica) -> str | None:
        """The error of a version that ended in a failed load (newest first), else None."""
        try:
            return self._load_error(self.versions(replica) or [])
        except ActionError:
            return None

    def wait_available(self, replica: Replica, timeout_s: float, version: str | None = None) -> str | None:
        """Wait until a version (``version`` if given) is AVAILABLE and return it; for a protocol
        that reports no versions, until the model is ready, and return None.

        Fails early when nothing is available and a load has ended in an error: the server has
        already given up retrying, and waiting out the timeout would only delay the alert. Fails at
        once when the replica cannot be verified at all (an unknown protocol label).
        """
        adapter = self.adapter(replica)  # CannotVerifyError: no amount of waiting helps
        deadline = self._clock() + timeout_s
        last = "no answer yet"
        while True:
            try:
                entries = adapter.versions(replica)
            except ActionError as exc:  # still starting: connection refused, NOT_FOUND
                last = str(exc)
            else:
                if entries is None:
                    check = adapter.ready(replica)
                    if check.ok:
                        return None
                    last = check.why
                else:
                    available = highest_available(entries)
                    if available is not None and (version is None or available == version):
                        return available
                    error = self._load_error(entries)
                    if available is None and error is not None:
                        raise ActionError(f"{replica}: model {replica.model} failed to load: {error}")
                    last = ", ".join(f"{e.version}={e.state}" for e in entries) or "no versions"
            if self._clock() >= deadline:
                want = f"version {version}" if version else "any version"
                raise ActionError(
                    f"{replica}: model {replica.model} not AVAILABLE ({want}) within {timeout_s:g}s; "
                    f"last status: {last}"
                )
            self._sleep(self.poll_s)

    # -- expected version --------------------------------------------------------------------
    @staticmethod
    def expected_version(model_repo: Path | None, pinned: str | None, before: str | None) -> str | None:
        """Pinned in config, else the highest numeric version folder, else what was served before.

        ``model_repo`` is the model's base path (``--model_base_path``, e.g. ``models/half_plus_two``).
        Hidden and non-numeric folders (a version being published under a staging name) are
        ignored, as TF Serving ignores them.
        """
        if pinned:
            return str(pinned)
        if model_repo is not None and model_repo.is_dir():
            versions = [p.name for p in model_repo.iterdir() if p.is_dir() and p.name.isdigit()]
            if versions:
                return str(max(int(v) for v in versions))
        return before

    # -- smoke --------------------------------------------------------------------------------
    def smoke(self, replica: Replica, version: str, smoke_dir: Path) -> None:
        """Predict the stored smoke instances and compare with the stored predictions.

        ``smoke_dir`` is the model repository root: the file is ``<smoke_dir>/<model>/<version>/
        smoke.json`` = ``{"instances": [...], "predictions": [...]}``.
        """
        path = smoke_dir / replica.model / str(version) / "smoke.json"
        try:
            stored = json.loads(path.read_text())
            instances, expected = stored["instances"], stored["predictions"]
        except FileNotFoundError:
            raise SmokeFileMissingError(f"{replica}: no smoke file {path} for version {version}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ActionError(f"{replica}: smoke file {path} unusable: {exc}") from None
        got = self.predict(replica, instances)
        if not predictions_match(expected, got, self.rel_tol, self.abs_tol):
            served = self.served_version(replica)
            raise ActionError(
                f"{replica}: smoke prediction mismatch for expected version {version}: "
                f"expected {expected}, got {got} (replica serves version {served})"
            )

    # -- settle -------------------------------------------------------------------------------
    def settle(
        self,
        probe: Callable[[], float],
        baseline: float,
        settle_s: float,
        tolerance: float,
        timeout_s: float | None = None,
        nan_ok: bool = True,
    ) -> float:
        """Wait until ``probe()`` stays within ``baseline + tolerance`` for ``settle_s``; return it.

        A NaN (no traffic, e.g. 0/0 right after a restore) does not break the streak when
        ``nan_ok``. Gives up after ``timeout_s`` (default ``3 * settle_s + 30``) with an
        :class:`ActionError` carrying the last value.
        """
        limit = baseline + tolerance
        give_up = self._clock() + (timeout_s if timeout_s is not None else 3 * settle_s + 30)
        streak_start: float | None = None
        value = math.nan
        while True:
            now = self._clock()
            try:
                value = float(probe())
                ok = value <= limit or (math.isnan(value) and nan_ok)
            except Exception as exc:  # a probe that cannot answer proves nothing
                value, ok = math.nan, False
                last_error = f" (probe failed: {type(exc).__name__}: {exc})"
            else:
                last_error = ""
            if not ok:
                streak_start = None
            elif streak_start is None:
                streak_start = now
            if streak_start is not None and now - streak_start >= settle_s:
                return value
            if now >= give_up:
                raise ActionError(
                    f"error ratio did not settle to <= {limit:g} (baseline {baseline:g} + {tolerance:g}) for "
                    f"{settle_s:g}s; last value {value:g}{last_error}"
                )
            self._sleep(self.poll_s)
