"""Online logistic regression by plain SGD: the learned failure predictor's model.

Why by hand: the predictor had river's ``LogisticRegression``, and importing it brings scipy, some
72 MB of RSS, for a model of five weights and an intercept (issue #18: the watcher's whole budget at
48 replicas is 150 MB). The arithmetic is river's, step for step (log loss on a logit, gradient
``-y / (exp(y * logit) + 1)`` with ``y`` in {-1, 1} and the same overflow cuts, the sample weight
applied before clipping, the intercept updated with its own rate, then each weight with the
optimiser's), so weights learned and checkpointed by either are the same numbers;
``tests/unit/detectors/test_logistic.py`` runs both on the same streams.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

_CLIP = 1e12  # river's default clip_gradient


def sigmoid(z: float) -> float:
    if z < -30:
        return 0.0
    if z > 30:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


class OnlineLogisticRegression:
    """Binary logistic regression over named features, learnt one example at a time.

    A feature seen for the first time starts at weight 0 (river's ``Zeros`` initialiser).
    """

    def __init__(self, lr: float, intercept: float = 0.0, weights: Mapping[str, float] | None = None) -> None:
        self.lr = lr
        self.intercept = intercept
        self._weights: dict[str, float] = dict(weights or {})

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def logit(self, x: Mapping[str, float]) -> float:
        w = self._weights
        return sum(w.get(name, 0.0) * value for name, value in x.items()) + self.intercept

    def predict_proba(self, x: Mapping[str, float]) -> float:
        """P(True | x)."""
        return sigmoid(self.logit(x))

    def learn(self, x: Mapping[str, float], y: bool, weight: float = 1.0) -> None:
        sign = 1 if y else -1
        z = self.logit(x) * sign
        if z > 18.0:
            gradient = math.exp(-z) * -sign
        elif z < -18.0:
            gradient = float(-sign)
        else:
            gradient = -sign / (math.exp(z) + 1.0)
        gradient = max(-_CLIP, min(_CLIP, gradient * weight))
        self.intercept -= self.lr * gradient
        w = self._weights
        for name, value in x.items():
            w[name] = w.get(name, 0.0) - self.lr * gradient * value
