"""A full retrain, as pure logic: a fresh challenger learns the older part of a window of
training examples, then champion and challenger are compared on its newest part.

The comparison is fair because both are prequential on the same hold-out: the champion by
the scores it served (before each label existed, while it kept learning online), the
challenger by predicting each hold-out example before learning it.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from online_models import evaluation
from online_models.spec import build_model, predict
from streams.declarations import PipelineSpec
from streams.schemas import TrainingExample


@dataclass(frozen=True)
class RetrainOutcome:
    challenger_model: Any
    spec: str                       # the challenger's model spec
    metric: str                     # what the decision was made on
    margin: float
    challenger: dict[str, float]    # hold-out metrics of each
    champion: dict[str, float]
    promote: bool
    train_examples: int
    holdout_examples: int

    def summary(self) -> dict[str, Any]:
        """The figures of the decision, JSON-ready (evidence of a control event)."""
        return {"metric": self.metric, "margin": self.margin,
                "challenger": self.challenger, "champion": self.champion,
                "train_examples": self.train_examples,
                "holdout_examples": self.holdout_examples}


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


def retrain(spec: PipelineSpec, examples: Sequence[TrainingExample]) -> RetrainOutcome:
    """Train a challenger on ``examples`` (oldest first) and decide whether it replaces the
    champion. Raises ValueError when there are too few examples for a hold-out."""
    policy = spec.retrain
    window = latest_window(spec, examples)
    holdout_size = min(policy.holdout, len(window) // 3)
    if holdout_size < 50:
        raise ValueError(f"{spec.name}: {len(window)} training examples are too few to retrain")
    train, holdout = window[:-holdout_size], window[-holdout_size:]
    model_spec = policy.model or spec.model
    challenger = build_model(model_spec)
    for ex in train:
        challenger.learn_one(ex.features, evaluation.as_label(spec.task, ex.label))
    ours = evaluation.new_metrics(spec.task, spec.metrics)
    theirs = evaluation.new_metrics(spec.task, spec.metrics)
    for ex in holdout:
        label = evaluation.as_label(spec.task, ex.label)
        evaluation.update(ours, spec.task, label, predict(challenger, spec.task, ex.features))
        evaluation.update(theirs, spec.task, label, ex.score)
        challenger.learn_one(ex.features, label)
    metric = spec.retrain_metric
    mine, champ = evaluation.values(ours), evaluation.values(theirs)
    return RetrainOutcome(
        challenger_model=challenger, spec=model_spec, metric=metric, margin=policy.margin,
        challenger=mine, champion=champ,
        promote=evaluation.better(metric, mine[metric], champ[metric], policy.margin),
        train_examples=len(train), holdout_examples=len(holdout))
