"""Building a pipeline's model and scoring with it.

A declaration names its models as factories (:data:`streams.declarations.ModelRef`): any
callable giving a fresh, untrained River estimator, or its import path
``"package.module:function"`` (what lineage records). The learner, the retrainer and tests
build their models here, so each builds the same.

>>> from streams.catalog.fraud import FRAUD
>>> model = build_model(FRAUD.model)
>>> 0.0 <= predict(model, "binary", {"amount": 3.0}) <= 1.0
True
>>> predict(build_model("streams.catalog.pricing:pricing_linear"), "regression",
...         {"distance_km": 3.0})
0.0
>>> champion = build_model("streams.catalog.agrawal:agrawal_tree")
>>> predict(champion, "binary", {"age": 30.0})  # nothing learned yet
0.5
>>> for age in (25.0, 50.0, 70.0) * 20:
...     champion.learn_one({"age": age}, age != 50.0)  # labels are bools: True is positive
>>> predict(champion, "binary", {"age": 25.0}) > 0.5
True
>>> build_model("streams.catalog.fraud:no_such_model")
Traceback (most recent call last):
...
LookupError: model 'streams.catalog.fraud:no_such_model': streams.catalog.fraud has no no_such_model
"""

from __future__ import annotations

import importlib

from river import base

from streams.declarations import ModelRef


def resolve(model: ModelRef):
    """The factory a declaration names; LookupError naming what is missing."""
    if not isinstance(model, str):
        return model
    module_name, _, attr = model.partition(":")
    if not attr:
        raise LookupError(f"model {model!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LookupError(f"model {model!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise LookupError(f"model {model!r}: {module_name} has no {attr}")
    return factory


def build_model(model: ModelRef) -> base.Estimator:
    """A fresh, untrained model from ``model``'s factory."""
    return resolve(model)()


def predict(model: base.Estimator, task: str, features: dict[str, float]) -> float:
    """The served score: the positive class's probability (0.5 while the model knows
    nothing) for a binary task, the predicted value for a regression."""
    if task == "binary":
        return float(model.predict_proba_one(features).get(True, 0.5))
    return float(model.predict_one(features))
