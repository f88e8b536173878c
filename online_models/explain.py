"""Why a model gave its score: each feature's contribution, by leaving it out. Pure.

A feature's contribution is the score minus the score the same model gives without that
feature. River models take a missing feature as its absence: a standardized linear model
as the feature at its training mean (so the contribution is the weight times the
standardized value, passed through the link), a Hoeffding tree by following its most
common branch. One method therefore explains every model spec, in the units of the score
(a probability, or the predicted value); it costs one prediction per feature, which the
API's inference cache pays once per model version and feature vector. (A tree's feature
whose value takes the most common branch anyway shows 0: leaving it out changes nothing.)

>>> from river import compose, linear_model, preprocessing
>>> model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LinearRegression())
>>> for x in range(1, 50):
...     model.learn_one({"a": float(x), "b": 1.0}, 3.0 * x)
>>> top = contributions(model, "regression", {"a": 40.0, "b": 1.0}, top=2)
>>> top[0].feature, top[0].contribution > 0
('a', True)
>>> round(top[1].contribution, 6)  # b never varied: the scaler left it at 0
0.0
"""

from __future__ import annotations

from typing import Any, NamedTuple

from online_models.spec import predict


class Contribution(NamedTuple):
    # A tuple of a string and floats: the garbage collector stops tracking it, which
    # matters in the API's inference cache (thousands of them made collections slow).
    feature: str
    value: float          # the feature's value in this request
    contribution: float   # score with it minus score without it


def contributions(model: Any, task: str, features: dict[str, float], top: int,
                  score: float | None = None) -> list[Contribution]:
    """The ``top`` features that moved the score most (either way), largest first.
    ``score`` is the model's score of ``features``, when the caller has it already."""
    if top <= 0 or not features:
        return []
    full = predict(model, task, features) if score is None else score
    out = []
    for name, value in features.items():
        without = {k: v for k, v in features.items() if k != name}
        out.append(Contribution(name, value, full - predict(model, task, without)))
    out.sort(key=lambda c: abs(c.contribution), reverse=True)
    return out[:top]
