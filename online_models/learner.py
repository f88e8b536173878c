"""The online learner: applies each labeled example to the model exactly once.

Predict-then-learn is structural: a :class:`~streams.schemas.TrainingExample` carries the
score that was served *before* its label existed, and the learner only ever learns from
it afterwards, so the prequential metrics below measure the model as it was served.

>>> from online_models.spec import build_model
>>> from streams.schemas import TrainingExample
>>> learner = OnlineLearner("fraud", "binary", build_model("fraud_logistic"))
>>> ex = TrainingExample(event_id="e1", entity="c1", event_time=1.0, features={"x": 1.0},
...                      score=0.5, model_version="v0.0", label=True, label_time=2.0)
>>> learner.learn(ex), learner.learn(ex), learner.updates, learner.duplicates
(True, False, 1, 1)
"""

from __future__ import annotations

from collections import OrderedDict

from river import base, metrics, utils

from streams.schemas import TrainingExample

# Rolling prequential metrics by task, by the names declarations use.
METRICS = {
    "binary": {"roc_auc": metrics.ROCAUC, "log_loss": metrics.LogLoss,
               "accuracy": metrics.Accuracy},
    "regression": {"mae": metrics.MAE, "rmse": metrics.RMSE},
}


class OnlineLearner:
    def __init__(self, pipeline: str, task: str, model: base.Estimator, *, revision: int = 0,
                 updates: int = 0, metric_window: int = 2000,
                 dedupe_window: int = 200_000) -> None:
        self.pipeline = pipeline
        self.task = task
        self.model = model
        self.revision = revision
        self.updates = updates
        self.duplicates = 0
        # Redelivery after a rebalance or a crash brings back recent examples only, so a
        # bounded memory of recent event ids is enough to learn each one once.
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window
        self.rolling = {name: utils.Rolling(cls, window_size=metric_window)
                        for name, cls in METRICS[task].items()}

    @property
    def version(self) -> str:
        """``v<revision>.<updates>``: the registry revision and the online updates since."""
        return f"v{self.revision}.{self.updates}"

    def learn(self, example: TrainingExample) -> bool:
        """Learn from ``example`` unless it was learned already; return whether it was."""
        if example.event_id in self._seen:
            self.duplicates += 1
            return False
        self._seen[example.event_id] = None
        if len(self._seen) > self._dedupe_window:
            self._seen.popitem(last=False)
        if self.task == "binary":
            y = bool(example.label)
            p = min(max(example.score, 1e-6), 1 - 1e-6)
            self.rolling["roc_auc"].update(y, p)
            self.rolling["log_loss"].update(y, p)
            self.rolling["accuracy"].update(y, p >= 0.5)
        else:
            y = float(example.label)
            for metric in self.rolling.values():
                metric.update(y, example.score)
        self.model.learn_one(example.features, y)
        self.updates += 1
        return True

    def metrics(self) -> dict[str, float]:
        return {name: float(m.get()) for name, m in self.rolling.items()}
