"""Model specifications: how a pipeline's fresh online model is built.

A spec is a name and a factory, so the learner, the retrainer and tests build identical
models. The fraud model is a standardizing logistic regression: cheap to learn one
example at a time, calibrated enough to rank, and fast to score in the API.

>>> model = build_model("fraud")
>>> 0.0 <= model.predict_proba_one({"amount": 3.0}).get(True, 0.5) <= 1.0
True
"""

from __future__ import annotations

from collections.abc import Callable

from river import base, compose, linear_model, optim, preprocessing


def _fraud_logistic() -> base.Classifier:
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-4),
    )


SPECS: dict[str, Callable[[], base.Estimator]] = {
    "fraud": _fraud_logistic,
}


def build_model(pipeline: str) -> base.Estimator:
    """A fresh, untrained model for ``pipeline``."""
    try:
        return SPECS[pipeline]()
    except KeyError:
        raise KeyError(f"no model spec for pipeline {pipeline!r}; known: {sorted(SPECS)}") from None


def score(model: base.Classifier, features: dict[str, float]) -> float:
    """The model's probability of the positive class (0.5 when it knows nothing yet)."""
    return float(model.predict_proba_one(features).get(True, 0.5))
