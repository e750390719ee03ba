"""The params models of the detectors whose implementations are heavy (numpy), in a module that
does not import it.

The rule-pack schema validates ``detector: {kind, params}`` with these models, so ``watcher rules
lint`` and the compile step of a pack that uses none of these kinds never load numpy (issue #18:
a watcher pays for a detector's imports only when a loaded rule uses it). The implementations import their model from
here and re-export it under its old name (``watcher.detectors.forecast.RunwayParams`` etc.).
Light detectors (``change``, ``templates``) keep their params beside their code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from watcher.rulepack.schema import Duration, StrictModel


class RunwayParams(StrictModel):
    """Params of ``forecast``: will ``series`` reach ``fraction * limit`` within ``within``?

    ``forecast:`` shorthands (``ForecastSpec`` in the schema) become these params too.
    """

    limit: float | str = Field(description="a number, or the series giving the limit per target")
    fraction: float = Field(default=1.0, gt=0, le=1)
    within: Duration = Field(description="horizon: fire when the predicted time to the limit is shorter")
    window: Duration = Field(default=600.0, description="history the trend is fitted on")
    bucket: Duration = Field(default=30.0, description="envelope bucket: longer than a GC cycle")
    min_buckets: int = Field(default=5, ge=3, description="closed buckets needed before forecasting")
    min_confidence: float = Field(default=0.8, gt=0.5, le=1.0, description="share of rising pairwise slopes")
    reset_drop: float = Field(default=0.4, gt=0, lt=1, description="a drop by this share resets (restart)")
    min_rise_steps: int = Field(
        default=0, ge=0, description="consecutive rising bucket steps required (a rise longer than a GC cycle's)"
    )
    urgent: float = Field(
        default=0.0,
        ge=0,
        description="fire at once when the time left is at most this many times the rise's time on new ground (0: off)",
    )
    urgent_points: int = Field(
        default=2, ge=2, description="points on the rise (its start included) the urgent path needs"
    )


class PeerParams(StrictModel):
    """Params of ``peer``: flag a replica whose ``series`` is far from its service's median."""

    k: float = Field(default=4.0, gt=0, description="robust z (MAD units) beyond which a replica is odd")
    direction: Literal["up", "both"] = "up"
    min_peers: int = Field(default=2, ge=2, description="siblings needed for a verdict")
    rel_floor: float = Field(default=0.1, ge=0, description="scale floor as a share of the median")
    min_deviation: float = Field(default=0.0, ge=0, description="scale floor in series units")
    stale_after: Duration = Field(default=120.0, description="values older than this are left out")


class PredictorParams(StrictModel):
    """Params of ``predictor``. Series names default to Docker stats' memory series."""

    memory_series: str = "memory_working_set_bytes"
    limit: float | str = "memory_limit_bytes"
    error_series: str | None = None
    latency_series: str | None = None
    horizon: Duration = Field(default=300.0, description="a failure within this counts as predicted")
    every: Duration = Field(default=15.0, description="feature snapshot (and observation) interval")
    threshold: float = Field(default=0.5, gt=0, lt=1, description="probability that makes the rule active")
    runway_scale: Duration = 120.0
    lr: float = Field(default=0.05, gt=0, le=1)
    pos_weight: float = Field(default=5.0, gt=0)
    priors: dict[str, float] = Field(default_factory=dict, description="overrides of DEFAULT_PRIORS")


class AnomalyParams(StrictModel):
    """Parameters of the ``anomaly`` detector. The defaults are the one set used on all of NAB."""

    threshold: float = Field(default=0.75, ge=0.0, le=1.0, description="alarm level (NAB-optimised, all profiles)")
    context_bits: int = Field(
        default=3, ge=1, le=16, description="bits of the quantised value fed to the context model"
    )
    context_max_left: int = Field(default=7, ge=1, description="largest left part of a context learnt by crossing")
    context_max_active: int = Field(default=15, ge=1, description="fired contexts fed back as facts to the next step")
    rest_level: float = Field(
        default=0.8, ge=0.0, le=1.0, description="a raw score at or above this starts a rest period (no output)"
    )
    rest: int = Field(default=150, ge=0, description="rest period in points, when no probation length is known")
    rest_fraction: float = Field(
        default=0.2, ge=0.0, description="rest period as a fraction of the probation length, when one is known"
    )
    blend: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="weight of the level channel (likelihood of the level/KNN/extreme surprise); 0 = context only",
    )
    spans: tuple[float, ...] = Field(default=(5.0, 50.0, 500.0), description="EW mean spans, in points")
    var_floor: float = Field(default=1e-3, gt=0, description="smallest deviation, as a fraction of the range")
    knn_dim: int = Field(default=8, ge=1, description="length of the subsequences compared by the neighbour model")
    knn_history: int = Field(default=1000, ge=10, description="past subsequences kept")
    knn_k: int = Field(default=3, ge=1)
    knn_calibration: int = Field(default=300, ge=10, description="recent distances a new one is ranked against")
    extreme_margin: float = Field(
        default=0.05, ge=0, description="a new extreme beyond the range seen so far by this fraction of it"
    )
    extreme_raw: float = Field(default=2.0, ge=0, description="raw score of such a new extreme (0 disables)")
    combine: Literal["max", "min", "mean"] = Field(
        default="min", description="how the level and context models' surprises are combined"
    )
    short_window: int = Field(default=1, ge=1, description="raw scores averaged by the likelihood")
    likelihood_floor: float = Field(
        default=0.1, gt=0, description="added to the raw scores' deviation: how calm a series may look"
    )
    long_window: int = Field(default=1500, ge=10, description="raw scores the likelihood compares with")
    learning: int = Field(default=150, ge=0, description="points before any score above 0 (warm-up)")
    surprise_cap: float = Field(default=10.0, gt=0, description="-log10 tail probability counted as raw 1")
    z_scale: float = Field(default=1.5, gt=0, description="likelihood z mapped to z / (z + z_scale)")
    seasonal_periods: tuple[float, ...] = Field(
        default=(86400.0, 604800.0), description="seasonal channel periods, in seconds (daily, weekly); () disables"
    )
    seasonal_alpha: float = Field(default=0.25, gt=0, le=1, description="EW weight of a new cycle in the profile")
    seasonal_weight: float = Field(default=0.9, ge=0, le=1, description="score of an infinitely large new record")
    seasonal_power: float = Field(default=1.5, gt=0, description="record ratio r scored weight·(1 - r^-power)")
    seasonal_min_records: int = Field(default=20, ge=1, description="residual z-scores seen before records count")
    seasonal_rest_level: float = Field(
        default=0.7, ge=0, le=1, description="a seasonal score at or above this rests the seasonal channel"
    )
    seasonal_max_points: int = Field(default=20160, ge=4, description="longest period kept, in points (memory)")
    resonance_weight: float = Field(
        default=1.0, ge=0, le=1, description="resonance channel: score of an infinitely large new record; 0 disables"
    )
    resonance_window: int = Field(default=12, ge=1, description="block means in one resonance input window")
    resonance_blocks: int = Field(
        default=75, ge=1, description="blocks per probation length (sets the block size when probation is known)"
    )
    resonance_downsample: int = Field(default=10, ge=1, description="block size in points when probation is unknown")
    resonance_vigilance: float = Field(default=0.85, ge=0, le=1, description="fuzzy ART vigilance")
    resonance_beta: float = Field(default=1.0, gt=0, le=1, description="fuzzy ART learning rate (1 = fast learning)")
    resonance_max_categories: int = Field(default=2000, ge=1, description="categories kept at most (memory)")
    resonance_power: float = Field(default=20.0, gt=0, description="record ratio r scored weight·(1 - r^-power)")
    resonance_min_records: int = Field(default=20, ge=1, description="mismatches counted before records count")
    resonance_rest_level: float = Field(
        default=0.78, ge=0, le=1, description="a resonance score at or above this rests the resonance channel"
    )


__all__ = ["AnomalyParams", "PeerParams", "PredictorParams", "RunwayParams"]
