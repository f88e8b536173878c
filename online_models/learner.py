"""The online learner: the one writer of a pipeline's model.

It applies each labeled example once, in the order of the training topic, and keeps what a
restart needs in itself, so that pickling it is a checkpoint: the model, the offset of the
next example to apply, the recent event ids (to skip an example the join emitted twice),
the prequential metrics per model version and the drift monitors.

Predict-then-learn is structural: a :class:`~streams.schemas.TrainingExample` carries the
score that was served *before* its label existed, and the learner only ever learns from it
afterwards, so the metrics and the error stream measure the model as it was served.

>>> from online_models.spec import build_model
>>> from streams.catalog.fraud import FRAUD
>>> from streams.schemas import TrainingExample
>>> learner = OnlineLearner(FRAUD, build_model(FRAUD.model))
>>> ex = TrainingExample(event_id="e1", entity="c1", event_time=1.0, features={"amount": 1.0},
...                      score=0.2, model_version="v0.0", label=False, label_time=2.0)
>>> learner.learn(ex), learner.learn(ex), learner.updates, learner.duplicates
(True, False, 1, 1)
>>> learner.metrics_by_version()["v0"]["accuracy"], learner.version
(1.0, 'v0.1')
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from monitoring.drift import ConceptDriftMonitor, DriftDetection, FeatureDriftMonitor
from online_models import evaluation
from online_models.health import non_finite
from online_models.spec import build_model, predict
from streams.declarations import PipelineSpec
from streams.schemas import InvalidRecord, TrainingExample


def revision_of(model_version: str) -> str:
    """``"v3"`` of ``"v3.1200"``: the registry revision a served score came from."""
    return model_version.partition(".")[0]


class OnlineLearner:
    # Metrics are kept for this many model revisions: the current one, and the ones whose
    # scores are still being labeled after a swap.
    KEEP_REVISIONS = 4
    # The pipeline's fallback model (``FallbackPolicy``), learned beside the champion from
    # the same examples and never swapped; a class default for checkpoints made before it.
    fallback: Any = None
    fallback_features: tuple[str, ...] = ()
    fallback_examples = 0

    def __init__(self, spec: PipelineSpec, model: Any, *, revision: int = 0,
                 metric_window: int = 2000, dedupe_window: int = 20_000) -> None:
        self.pipeline = spec.name
        self.task = spec.task
        self.metric_names = spec.metrics
        self.model = model
        self.revision = revision
        self.updates = 0        # labels learned by this pipeline, over every revision
        self.duplicates = 0
        # The training-topic offset of the next example to apply; None until the first one
        # (a learner made without a checkpoint starts where its consumer starts).
        self.next_offset: int | None = None
        # Examples up to this offset are in the model already (a promoted model was trained
        # on them): they count and are evaluated, but are not learned a second time.
        self.learned_through = -1
        # Redelivered duplicates from the join follow their original closely, so a bounded
        # memory of recent event ids is enough to learn each event once.
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window
        self._metric_window = metric_window
        self._by_version: OrderedDict[str, tuple[dict, list[int]]] = OrderedDict()
        drift = spec.drift
        self.concept = ConceptDriftMonitor(drift.concept, **dict(drift.concept_params))
        self.feature_drift = FeatureDriftMonitor(
            spec.model_feature_names, categorical=drift.categorical,
            reference_size=drift.reference_size, window=drift.window,
            check_every=drift.check_every, psi_threshold=drift.psi_threshold,
            p_value=drift.p_value)
        self._detections: list[DriftDetection] = []
        self.add_fallback(spec)

    def add_fallback(self, spec: PipelineSpec) -> None:
        """Start learning the declared fallback model, if there is one and none yet (a
        checkpoint from before fallbacks gets a fresh one)."""
        if spec.fallback is not None and self.fallback is None:
            self.fallback = build_model(spec.fallback.model or spec.model)
            self.fallback_features = spec.fallback.features
            self.fallback_examples = 0

    @property
    def version(self) -> str:
        """``v<revision>.<updates>``: the registry revision and the labels learned."""
        return f"v{self.revision}.{self.updates}"

    def learn(self, example: TrainingExample, *, update_model: bool = True,
              careful: bool = False) -> bool:
        """Learn from ``example`` unless it was learned already; return whether it was.
        With ``update_model=False`` it counts and is evaluated, but the model, which
        learned it elsewhere, is left alone. An example with a feature that is not finite
        raises :class:`InvalidRecord`, as does, when ``careful``, one whose learning step
        would make the model's score of it non-finite (the step is undone): nothing of
        either is counted or learned."""
        if example.event_id in self._seen:
            self.duplicates += 1
            return False
        bad = {f"features.{k}": "not a finite number" for k, v in example.features.items()
               if not math.isfinite(v)}
        if bad:
            raise InvalidRecord(bad)
        label = evaluation.as_label(self.task, example.label)
        features = example.features
        if careful:
            saved = copy.deepcopy((self.model, self.fallback))
            self._step(features, label, update_model)
            if not self.healthy([features]):
                self.model, self.fallback = saved
                raise InvalidRecord({"features": "learning it made the model non-finite "
                                                 "(the step was undone)"})
        else:
            self._step(features, label, update_model)
        self._seen[example.event_id] = None
        if len(self._seen) > self._dedupe_window:
            self._seen.popitem(last=False)
        ms, count = self._metrics_of(revision_of(example.model_version))
        evaluation.update(ms, self.task, label, example.score)
        count[0] += 1
        detections = [self.feature_drift.update(features)]
        if self._watches(example.model_version):
            detections.append(
                self.concept.update(evaluation.error_of(self.task, label, example.score)))
        self._detections.extend(d for d in detections if d is not None)
        if self.fallback is not None:
            self.fallback_examples += 1
        self.updates += 1
        return True

    def _step(self, features: dict[str, float], label: Any, update_model: bool) -> None:
        if update_model:
            self.model.learn_one(features, label)
        if self.fallback is not None:
            self.fallback.learn_one(self._fallback_row(features), label)

    def _fallback_row(self, features: Mapping[str, float]) -> dict[str, float]:
        return {k: features[k] for k in self.fallback_features if k in features}

    def healthy(self, rows: Iterable[Mapping[str, float]]) -> bool:
        """Whether every number in the model's (and the fallback's) state is finite, and so
        is their score of each of ``rows``.

        >>> from online_models.spec import build_model
        >>> from streams.catalog.fraud import FRAUD
        >>> learner = OnlineLearner(FRAUD, build_model(FRAUD.model))
        >>> learner.healthy([{"amount": 10.0}])
        True
        >>> learner.model.learn_one({"amount": float("inf")}, True)
        >>> learner.healthy([{"amount": 10.0}])
        False
        """
        return non_finite((self.model, self.fallback)) is None and all(
            math.isfinite(predict(self.model, self.task, row))
            and (self.fallback is None
                 or math.isfinite(predict(self.fallback, self.task, self._fallback_row(row))))
            for row in rows)

    def _watches(self, model_version: str) -> bool:
        """Whether a served score belongs on the error stream of the current model: not
        one of an older revision (labels of its scores keep coming after a swap) and not
        one of the untrained model (its errors fall fast, which is no drift)."""
        revision, _, updates = model_version.partition(".")
        return revision == f"v{self.revision}" and updates not in ("", "0")

    def swap(self, model: Any, revision: int, reference: Iterable[Mapping[str, float]],
             learned_through: int = -1) -> None:
        """Serve and learn ``model`` from now on: a promotion or a rollback. ``reference``
        are the feature rows it was trained on, the new baseline of feature drift;
        ``learned_through`` the last training offset it has learned."""
        self.model = model
        self.revision = revision
        self.learned_through = learned_through
        self.concept.reset()
        self.feature_drift.set_reference(reference)

    def pop_detections(self) -> list[DriftDetection]:
        """Drift detected since the last call."""
        out, self._detections = self._detections, []
        return out

    def metrics_by_version(self) -> dict[str, dict[str, float]]:
        """Rolling prequential metrics of each recent model revision, with ``labels``:
        how many of its scores were labeled."""
        return {rev: {**evaluation.values(ms), "labels": float(count[0])}
                for rev, (ms, count) in self._by_version.items()}

    def _metrics_of(self, revision: str) -> tuple[dict, list[int]]:
        entry = self._by_version.get(revision)
        if entry is None:
            entry = (evaluation.new_metrics(self.task, self.metric_names, self._metric_window),
                     [0])
            self._by_version[revision] = entry
            while len(self._by_version) > self.KEEP_REVISIONS:
                self._by_version.popitem(last=False)
        return entry
