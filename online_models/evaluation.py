"""Prequential evaluation, shared by the online learner and the retrainer: the metrics a
pipeline declares, updated from a served score and the label that came later.

>>> ms = new_metrics("binary", ("accuracy", "log_loss"))
>>> update(ms, "binary", True, 0.9); update(ms, "binary", False, 0.2)
>>> values(ms)
{'accuracy': 1.0, 'log_loss': 0.164252033486018}
>>> better("log_loss", 0.10, 0.15, margin=0.01), better("accuracy", 0.80, 0.795, margin=0.01)
(True, False)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from river import metrics, utils

# The metrics a declaration may name, by task.
METRICS = {
    "binary": {"roc_auc": metrics.ROCAUC, "log_loss": metrics.LogLoss,
               "accuracy": metrics.Accuracy},
    "regression": {"mae": metrics.MAE, "rmse": metrics.RMSE},
}

# Scores are clipped away from 0 and 1 so that one confident miss cannot make log loss infinite.
_EPS = 1e-6


def new_metrics(task: str, names: Iterable[str], window: int | None = None) -> dict:
    """Fresh metrics: over everything seen, or over the last ``window`` labels."""
    known = METRICS[task]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {task} metric(s) {unknown}; known: {sorted(known)}")
    if window is None:
        return {name: known[name]() for name in names}
    return {name: _rolling(name, known[name], window) for name in names}


def _rolling(name: str, metric: type, window: int) -> metrics.base.Metric:
    # River's own rolling ROC AUC is exact and costs 0.3 microseconds a label; a generic
    # Rolling(ROCAUC) reverts ten thresholds' confusion matrices, 10 (the learner's
    # largest cost after the model itself).
    if name == "roc_auc":
        return metrics.RollingROCAUC(window_size=window)
    return utils.Rolling(metric, window_size=window)


def update(ms: Mapping, task: str, label: bool | float, score: float) -> None:
    """Update every metric with one served ``score`` and its ``label``."""
    if task == "binary":
        p = min(max(score, _EPS), 1 - _EPS)
        for name, metric in ms.items():
            metric.update(bool(label), p >= 0.5 if name == "accuracy" else p)
    else:
        for metric in ms.values():
            metric.update(float(label), score)


def values(ms: Mapping) -> dict[str, float]:
    return {name: float(metric.get()) for name, metric in ms.items()}


def as_label(task: str, value: bool | float) -> bool | float:
    """A target as models and metrics take it: a bool for a classifier, else a float."""
    return bool(value) if task == "binary" else float(value)


def error_of(task: str, label: bool | float, score: float) -> float:
    """The error stream concept drift is detected on: a classifier's 0/1 mistakes, a
    regression's absolute errors."""
    if task == "binary":
        return float((score >= 0.5) != bool(label))
    return abs(float(label) - score)


def bigger_is_better(metric: str) -> bool:
    """Whether a higher ``metric`` is a better model, as River's metric says.

    >>> bigger_is_better("roc_auc"), bigger_is_better("log_loss")
    (True, False)
    """
    for by_name in METRICS.values():
        if metric in by_name:
            return by_name[metric]().bigger_is_better
    raise ValueError(f"unknown metric {metric!r}")


def better(metric: str, challenger: float, champion: float, margin: float) -> bool:
    """Whether ``challenger`` beats ``champion`` on ``metric`` by at least ``margin``."""
    if bigger_is_better(metric):
        return challenger >= champion + margin
    return challenger <= champion - margin
