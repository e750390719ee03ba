"""The predictor's written-out logistic regression learns exactly as river's does.

river stays a development dependency for this comparison only: the same streams of examples
(weighted positives, new features appearing, logits past the overflow cuts) through both models
must give the same weights, intercept and probabilities, so a checkpoint is the same numbers
whichever model wrote it.
"""

from __future__ import annotations

import random

import pytest

from watcher.detectors.logistic import OnlineLogisticRegression

river = pytest.importorskip("river")
from river import linear_model, optim  # noqa: E402

FEATURES = ["runway", "mem_high", "errors", "latency", "restarts"]


@pytest.mark.parametrize("seed", range(5))
def test_same_weights_and_probabilities_as_rivers_logistic_regression(seed: int) -> None:
    rng = random.Random(seed)
    lr = rng.choice([0.01, 0.05, 0.3])
    priors = {"runway": 12.0, "mem_high": 3.0, "errors": 3.0}  # latency and restarts start unknown
    ours = OnlineLogisticRegression(lr, intercept=-4.0, weights=priors)
    theirs = linear_model.LogisticRegression(optimizer=optim.SGD(lr), l2=0.0, intercept_init=-4.0, intercept_lr=lr)
    for name, w in priors.items():
        theirs._weights[name] = w
    for _ in range(400):
        x = {n: rng.choice([0.0, rng.random(), 1.0]) for n in rng.sample(FEATURES, rng.randint(1, 5))}
        if rng.random() < 0.05:
            x = {n: 40.0 for n in x}  # far past the overflow cuts, both ways
        assert ours.predict_proba(x) == pytest.approx(theirs.predict_proba_one(x)[True], abs=1e-12)
        y = rng.random() < 0.2
        weight = 5.0 if y else 1.0
        ours.learn(x, y, weight=weight)
        theirs.learn_one(x, y, w=weight)
    assert ours.intercept == pytest.approx(theirs.intercept, rel=1e-9)
    assert ours.weights == pytest.approx(theirs.weights, rel=1e-9)


def test_a_positive_example_raises_its_probability_and_a_negative_lowers_it() -> None:
    model = OnlineLogisticRegression(0.1, intercept=-4.0)
    x = {"runway": 1.0}
    before = model.predict_proba(x)
    model.learn(x, True, weight=5.0)
    assert model.predict_proba(x) > before
    raised = model.predict_proba(x)
    model.learn(x, False)
    assert model.predict_proba(x) < raised
