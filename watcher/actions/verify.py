"""Verify that a restarted replica serves the right model, correctly, before it gets traffic back.

A container that is "running" proves nothing: TF Serving may still be loading, may have failed to
load, or may have come back serving an older version (a rolled-back volume, a pinned config).
So restoring weight is gated on four checks, all against TF Serving's own REST API:

1. the model is AVAILABLE (``GET /v1/models/<name>``), waiting for it boundedly;
2. the version served is the expected one (:meth:`Verifier.expected_version`: pinned in config,
   else the highest version folder in the model repository, as TF Serving itself would pick, else
   the version served before the incident);
3. a smoke prediction: the stored ``<repo>/<model>/<version>/smoke.json`` instances, posted to
   the *unversioned* predict endpoint (what clients call), give the stored predictions within a
   tolerance;
4. no load attempt failed meanwhile (a version in state END with an error).

Afterwards :meth:`Verifier.settle` watches an error ratio the executor supplies (e.g. from
Prometheus) return to its baseline and stay there for a settle period.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from watcher.actions.base import ActionError, Replica, http_session

__all__ = ["SmokeFileMissingError", "Verifier", "predictions_match"]


class SmokeFileMissingError(ActionError):
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


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


class Verifier:
    """TF Serving model checks over REST, with an injectable clock for tests."""

    def __init__(
        self,
        timeout_s: float = 2.0,
        *,
        poll_s: float = 0.25,
        rel_tol: float = 1e-5,
        abs_tol: float = 1e-6,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        self._session = session or http_session()
        self._clock = clock
        self._sleep = sleep

    # -- status ---------------------------------------------------------------------------------
    def model_status(self, replica: Replica) -> list[dict[str, Any]]:
        """``model_version_status`` entries; raises :class:`ActionError` when unreachable or unknown."""
        url = f"{replica.rest_url}/v1/models/{replica.model}"
        try:
            resp = self._session.get(url, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ActionError(f"{replica}: model status unreachable: {type(exc).__name__}") from None
        try:
            body = resp.json()
        except ValueError:
            raise ActionError(f"{replica}: model status HTTP {resp.status_code}, not JSON: {resp.text[:200]}") from None
        if resp.status_code != 200:
            raise ActionError(f"{replica}: model status HTTP {resp.status_code}: {body.get('error', body)}")
        entries = body.get("model_version_status")
        if not isinstance(entries, list):
            raise ActionError(f"{replica}: model status without model_version_status: {str(body)[:200]}")
        return [e for e in entries if isinstance(e, dict)]

    @staticmethod
    def _available(entries: list[dict[str, Any]]) -> str | None:
        versions = [str(e.get("version")) for e in entries if e.get("state") == "AVAILABLE"]
        return max(versions, key=_version_key) if versions else None

    @staticmethod
    def _load_error(entries: list[dict[str, Any]]) -> str | None:
        for e in sorted(entries, key=lambda e: _version_key(str(e.get("version"))), reverse=True):
            status = e.get("status") or {}
            code = str(status.get("error_code", "OK"))
            if e.get("state") == "END" and code not in ("OK", "0", ""):
                return f"version {e.get('version')}: {code}: {status.get('error_message', '')}".strip()
        return None

    def served_version(self, replica: Replica) -> str | None:
        """The highest AVAILABLE version, or None (nothing available, or the replica is down)."""
        try:
            return self._available(self.model_status(replica))
        except ActionError:
            return None

    def load_failed(self, replica: Replica) -> str | None:
        """The error of a version that ended in a failed load (newest first), else None."""
        try:
            return self._load_error(self.model_status(replica))
        except ActionError:
            return None

    def wait_available(self, replica: Replica, timeout_s: float, version: str | None = None) -> str:
        """Wait until a version (``version`` if given) is AVAILABLE and return it.

        Fails early when nothing is available and a load has ended in an error: TF Serving has
        already given up retrying, and waiting out the timeout would only delay the alert.
        """
        deadline = self._clock() + timeout_s
        last = "no answer yet"
        while True:
            try:
                entries = self.model_status(replica)
            except ActionError as exc:  # still starting: connection refused, NOT_FOUND
                last = str(exc)
            else:
                available = self._available(entries)
                if available is not None and (version is None or available == version):
                    return available
                error = self._load_error(entries)
                if available is None and error is not None:
                    raise ActionError(f"{replica}: model {replica.model} failed to load: {error}")
                last = ", ".join(f"{e.get('version')}={e.get('state')}" for e in entries) or "no versions"
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
        url = f"{replica.rest_url}/v1/models/{replica.model}:predict"
        try:
            resp = self._session.post(url, data=json.dumps({"instances": instances}), timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ActionError(f"{replica}: smoke prediction failed: {type(exc).__name__}") from None
        try:
            body = resp.json()
        except ValueError:
            body = {"error": resp.text[:200]}
        if resp.status_code != 200:
            raise ActionError(f"{replica}: smoke prediction HTTP {resp.status_code}: {body.get('error', body)}")
        got = body.get("predictions")
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
