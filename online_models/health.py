"""Whether a model is fit to serve: every number in its state finite, and its scores.

A model's state can turn non-finite a step before its scores do: an extreme input made a
``StandardScaler``'s variance infinite, every score still finite, and the *next* ordinary
example turned every weight NaN. So a learning step is judged by the state it leaves
(:func:`non_finite`), not only by a score.
"""

from __future__ import annotations

import math
from typing import Any


def non_finite(state: Any, path: str = "model", _seen: set[int] | None = None) -> str | None:
    """The path of the first number in ``state`` (an estimator's attributes, dicts, lists
    and tuples, recursively) that is not finite, or None. State kept in native types the
    walk cannot see into (River's ``VectorDict``, numpy arrays) shows in the scores.

    >>> from river import preprocessing
    >>> scaler = preprocessing.StandardScaler()
    >>> scaler.learn_one({"amount": 5.0})
    >>> non_finite(scaler) is None
    True
    >>> scaler.learn_one({"amount": 1e300})
    >>> non_finite(scaler)
    "model.vars['amount']"
    """
    if isinstance(state, float):
        return None if math.isfinite(state) else path
    seen = set() if _seen is None else _seen
    if isinstance(state, (str, bytes, int, type(None))) or id(state) in seen:
        return None
    seen.add(id(state))
    if isinstance(state, dict):
        items = ((f"{path}[{k!r}]", v) for k, v in state.items())
    elif isinstance(state, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(state))
    elif hasattr(state, "__dict__"):
        items = ((f"{path}.{k}", v) for k, v in vars(state).items())
    else:
        return None
    for where, value in items:
        found = non_finite(value, where, seen)
        if found is not None:
            return found
    return None
