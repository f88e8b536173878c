"""A namespace seeded with a pipeline's state from a generated history, without Kafka or
the worker, for the API's tests and its load benchmark: the entities' window states in
Redis and a model, with its fallback, learned from the history's labels.

The history runs through the worker's own code, in emission order: each event is featurized
by :class:`~streams.engine.FeatureEngine` and scored before its label exists, and each label
is learned by :class:`~online_models.learner.OnlineLearner` (predict first, then learn).

>>> from streams.pipelines import PIPELINES
>>> seeded = replay(PIPELINES["fraud"], events=300, now=1.7e9, seed=1)
>>> seeded.learner.updates > 250, len(seeded.states) > 10, seeded.learner.fallback is not None
(True, True, True)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from driftline.adapters.config import Settings
from driftline.adapters.stores import FeatureStore, RedisKeys, SnapshotStore, connect
from online_models.learner import OnlineLearner
from online_models.spec import build_model, predict
from streams.declarations import PipelineSpec
from streams.engine import FeatureEngine
from streams.generators import pipeline_history
from streams.schemas import Record, TrainingExample


@dataclass
class Seeded:
    spec: PipelineSpec
    learner: OnlineLearner
    states: dict[str, dict[str, Any]]              # entity -> window state
    features: dict[str, dict[str, float]]          # entity -> its newest event's features
    events: list[Record] = field(default_factory=list)  # every event, in emission order


def replay(spec: PipelineSpec, events: int, now: float, seed: int = 7) -> Seeded:
    """Run ``events`` of the pipeline's generated history (ending at ``now``) through the
    feature engine and the learner. Pure: nothing leaves the process."""
    engine = FeatureEngine(spec)
    learner = OnlineLearner(spec, build_model(spec.model))
    states: dict[str, dict[str, Any]] = {}
    latest: dict[str, dict[str, float]] = {}
    pending: dict[str, tuple[Record, dict[str, float], float]] = {}
    seen: list[Record] = []
    _, emissions = pipeline_history(spec, events, now, seed=seed, run_id=f"seed{seed}")
    for emission in emissions:
        record = emission.record
        if emission.kind == "event":
            entity = spec.entity_of(record)
            try:
                states[entity], features = engine.observe(states.get(entity), record)
            except ValueError:  # late or duplicate, as the worker would dead-letter it
                continue
            latest[entity] = features
            pending[spec.event_id_of(record)] = (
                record, features, predict(learner.model, spec.task, features))
            seen.append(record)
        else:
            found = pending.pop(spec.event_id_of(record), None)
            if found is None:
                continue
            event, features, score = found
            learner.learn(TrainingExample(
                event_id=spec.event_id_of(event), entity=spec.entity_of(event),
                event_time=spec.time_of(event), features=features, score=score,
                model_version=learner.version, label=spec.target_of(record),
                label_time=spec.label_time_of(record)))
    return Seeded(spec, learner, states, latest, seen)


async def publish(settings: Settings, seeded: Seeded) -> None:
    """Write the states to the feature store and publish the model and its fallback as the
    pipeline's snapshot, as the worker and the learner would."""
    client = connect(settings)
    keys = RedisKeys(settings.redis_prefix, seeded.spec.name)
    try:
        store = FeatureStore(client, keys)
        for entity, state in seeded.states.items():
            await store.put(entity, seeded.features[entity], state,
                            state["newest"] or 0.0)
        learner = seeded.learner
        await SnapshotStore(client, keys).publish(learner.model, learner.version,
                                                  fallback=learner.fallback,
                                                  fallback_examples=learner.fallback_examples)
    finally:
        await client.aclose()


def seed(settings: Settings, spec: PipelineSpec, events: int, now: float,
         seed: int = 7) -> Seeded:
    """:func:`replay`, then :func:`publish` into ``settings``' namespace."""
    seeded = replay(spec, events, now, seed)
    asyncio.run(publish(settings, seeded))
    return seeded
