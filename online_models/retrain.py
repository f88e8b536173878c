"""A full retrain, as pure logic: fresh challengers learn the older part of a window of
training examples, then the best of them and the champion are compared on its newest part.

The comparison is fair because all are prequential on the same hold-out: the champion by
the scores it served (before each label existed, while it kept learning online), each
challenger by predicting each hold-out example before learning it.

The challengers are the retrain policy's model (default: the pipeline's) and the
declaration's ``candidates``, each once (by :func:`~streams.declarations.model_name`),
trained one after another on the same examples in the declared order. The best on the
pipeline's retrain metric challenges the champion (a tie goes to the one declared first);
every candidate's hold-out figures and seconds are in the outcome.

>>> from streams.catalog.fraud import FRAUD
>>> from streams.schemas import TrainingExample
>>> examples = [TrainingExample(event_id=f"e{i}", entity="c", event_time=float(i),
...                             features={"amount": float(i % 2)}, score=0.5,
...                             model_version="v0.0", label=bool(i % 2), label_time=i + 1.0)
...             for i in range(4000)]
>>> outcome = retrain(FRAUD, examples)
>>> outcome.train_examples, outcome.holdout_examples, outcome.metric
(2000, 1000, 'roc_auc')
>>> outcome.champion["roc_auc"], outcome.challenger["roc_auc"] > 0.99, outcome.promote
(0.5, True, True)
>>> list(outcome.candidates) == [outcome.spec]
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from online_models import evaluation
from online_models.spec import build_model, predict
from streams.declarations import ModelRef, PipelineSpec, model_name
from streams.schemas import TrainingExample


@dataclass(frozen=True)
class RetrainOutcome:
    challenger_model: Any
    spec: str                       # the challenger's model spec (the best candidate's)
    metric: str                     # what the decision was made on
    margin: float
    challenger: dict[str, float]    # hold-out metrics of each
    champion: dict[str, float]
    promote: bool
    train_examples: int
    holdout_examples: int
    # Every candidate's hold-out metrics, by model spec, in the declared order (the
    # challenger's among them), and the seconds each took to learn the window.
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # candidates that raised: the error

    def summary(self) -> dict[str, Any]:
        """The figures of the decision, JSON-ready (evidence of a control event)."""
        out = {"metric": self.metric, "margin": self.margin,
               "challenger": self.challenger, "champion": self.champion,
               "train_examples": self.train_examples,
               "holdout_examples": self.holdout_examples,
               "spec": self.spec, "candidates": self.candidates,
               "candidate_seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
        if self.failed:
            out["candidates_failed"] = self.failed
        return out


def latest_window(spec: PipelineSpec,
                  examples: Sequence[TrainingExample]) -> list[TrainingExample]:
    """The newest ``spec.retrain.window`` examples, each event once (the join may have
    emitted one twice after a crash), oldest first."""
    seen: set[str] = set()
    out: list[TrainingExample] = []
    for ex in reversed(examples):
        if ex.event_id not in seen:
            seen.add(ex.event_id)
            out.append(ex)
            if len(out) == spec.retrain.window:
                break
    return out[::-1]


def candidates_of(spec: PipelineSpec) -> dict[str, ModelRef]:
    """The models a retrain trains, by model spec: the retrain policy's (default: the
    pipeline's), then the declared candidates, each once.

    >>> from streams.catalog.fraud import FRAUD
    >>> list(candidates_of(FRAUD))[0]
    'streams.catalog.fraud:fraud_logistic'
    """
    out: dict[str, ModelRef] = {}
    for ref in (spec.retrain.model or spec.model, *spec.candidates):
        out.setdefault(model_name(ref), ref)
    return out


def train_candidate(spec: PipelineSpec, ref: ModelRef, train: Sequence[TrainingExample],
                    holdout: Sequence[TrainingExample]) -> tuple[Any, dict[str, float]]:
    """A fresh model of ``ref`` that learned ``train``, then ``holdout`` prequentially
    (predict, then learn), and its metrics on the hold-out."""
    model = build_model(ref)
    for ex in train:
        model.learn_one(ex.features, evaluation.as_label(spec.task, ex.label))
    ms = evaluation.new_metrics(spec.task, spec.metrics)
    for ex in holdout:
        label = evaluation.as_label(spec.task, ex.label)
        evaluation.update(ms, spec.task, label, predict(model, spec.task, ex.features))
        model.learn_one(ex.features, label)
    return model, evaluation.values(ms)


def _beats(metric: str, value: float, best: float) -> bool:
    """Strictly better on ``metric`` (a value that is not a number never is)."""
    if math.isnan(value):
        return False
    return math.isnan(best) or (value != best and evaluation.better(metric, value, best, 0.0))


def retrain(spec: PipelineSpec, examples: Sequence[TrainingExample]) -> RetrainOutcome:
    """Train every candidate on ``examples`` (oldest first) and decide whether the best
    replaces the champion. Raises ValueError when there are too few examples for a
    hold-out; a candidate that raises is left out (``failed``), unless every one does."""
    policy = spec.retrain
    window = latest_window(spec, examples)
    holdout_size = min(policy.holdout, len(window) // 3)
    if holdout_size < 50:
        raise ValueError(f"{spec.name}: {len(window)} training examples are too few to retrain")
    train, holdout = window[:-holdout_size], window[-holdout_size:]
    metric = spec.retrain_metric
    figures: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    errors: list[Exception] = []
    best: tuple[str, Any] | None = None
    for name, ref in candidates_of(spec).items():
        started = time.perf_counter()
        try:
            model, figures[name] = train_candidate(spec, ref, train, holdout)
        except Exception as exc:  # noqa: BLE001 - one bad candidate does not stop the others
            failed[name] = repr(exc)
            errors.append(exc)
            continue
        finally:
            seconds[name] = time.perf_counter() - started
        if best is None or _beats(metric, figures[name][metric], figures[best[0]][metric]):
            best = (name, model)
    if best is None:
        raise errors[0]
    theirs = evaluation.new_metrics(spec.task, spec.metrics)
    for ex in holdout:
        evaluation.update(theirs, spec.task, evaluation.as_label(spec.task, ex.label), ex.score)
    name, challenger = best
    mine, champ = figures[name], evaluation.values(theirs)
    return RetrainOutcome(
        challenger_model=challenger, spec=name, metric=metric, margin=policy.margin,
        challenger=mine, champion=champ,
        promote=evaluation.better(metric, mine[metric], champ[metric], policy.margin),
        train_examples=len(train), holdout_examples=len(holdout),
        candidates=figures, seconds=seconds, failed=failed)
