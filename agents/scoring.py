"""Scoring: a batch of events becomes features, scores and snapshots.

::

    <p>.events --score--> entity state (table), features (Redis), <p>.predictions,
                          <p>.join (the snapshot, sent where its label will land)

Per batch: one Redis read of the erasure register for its entities, the features of each
event in order from its entity's state (the same engine the API, the replay and the tests
run), one neighbour search for all of them (when declared), a score each, then one write
of each entity's newest state to the table and to Redis, and the outputs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents.consume import DeadLetters
from agents.faust_fixes import retried
from agents.outputs import Outputs, partition_for
from driftline.adapters.stores import EmbeddingStore, FeatureStore, LiveModel
from driftline.adapters.vectors import STORE_ERRORS, EmbeddingSpace
from monitoring import metrics
from monitoring.logs import entity_ref
from online_models.spec import predict
from streams.declarations import PipelineSpec
from streams.engine import (
    DuplicateEvent,
    FeatureEngine,
    FutureEvent,
    LateEvent,
    UnsafeFeatures,
)
from streams.schemas import InvalidRecord, Prediction, Snapshot, parse
from streams.topics import PipelineTopics


@dataclass
class _Scored:
    record: Any
    entity: str
    event_id: str
    event_time: float
    features: dict[str, float]


class EventScorer:
    """Handles batches of the events topic for one pipeline."""

    def __init__(self, spec: PipelineSpec, topics: PipelineTopics, table: Any,
                 features: FeatureStore, erasures: EmbeddingStore, live: LiveModel,
                 space: EmbeddingSpace | None, outputs: Outputs, deadletters: DeadLetters,
                 join_partitions: int) -> None:
        self.spec = spec
        self.topics = topics
        self.table = table  # entity -> window state (a CachedTable), changelog-backed
        self.features = features
        self.erasures = erasures
        self.live = live
        self.space = space
        self.outputs = outputs
        self.deadletters = deadletters
        self.join_partitions = join_partitions
        self.engine = FeatureEngine(spec)
        name = spec.name
        self._ok = metrics.EVENTS.labels(pipeline=name, kind="event", outcome="ok")
        self._predictions = metrics.PREDICTIONS.labels(pipeline=name, process="worker")
        self._freshness = metrics.FEATURE_FRESHNESS.labels(pipeline=name)
        self._seconds = metrics.EVENT_SECONDS.labels(pipeline=name)
        self._duplicates = metrics.DUPLICATE_EVENTS.labels(pipeline=name)
        self._late = metrics.LATE_EVENTS.labels(pipeline=name)

    def join_partition(self, event_id: str) -> int:
        """Where the label of ``event_id`` lands, by the labels producer's partitioner."""
        return partition_for(event_id.encode(), self.join_partitions,
                             self.spec.labels_partitioner)

    async def handle(self, records: Sequence[Any]) -> None:
        started = time.perf_counter()
        spec = self.spec
        parsed = []
        for rec in records:
            try:
                event = parse(spec.event_type, rec.value)
                entity = spec.entity_of(event)
                if rec.key != entity.encode():
                    raise InvalidRecord({"$key": _key_error(rec.key, spec.entity_field,
                                                            entity)})
            except InvalidRecord as exc:
                self.deadletters.send(rec, exc, "event")
                continue
            parsed.append((rec, event, entity))
        if not parsed:
            return
        # Read for every batch, not from a periodic copy: a batch between an erasure and
        # the next refresh would otherwise write the erased history back.
        entities = list({entity for _, _, entity in parsed})
        erased_until = await retried(lambda: self.erasures.forgotten_among(entities),
                                     STORE_ERRORS, f"{spec.name}: reading the erasure register")
        now = time.time()  # how far ahead of it an event's time may be
        states: dict[str, Any] = {}     # each entity's state as the batch moves it on
        newest: dict[str, tuple] = {}   # entity -> (record, features, event time) to write
        scored: list[_Scored] = []
        replayed = 0  # scored again after a crash: counted as duplicates, not as new events
        for rec, event, entity in parsed:
            if entity not in states:
                states[entity] = self.table.get(entity, rec)
            prior = states[entity]
            until = erased_until.get(entity)
            event_time = spec.time_of(event)
            erased = until is not None and event_time <= until
            if erased or (prior and until is not None and prior["newest"] <= until):
                prior = None  # the history before the erasure is not used, nor rebuilt
            try:
                state, features = self.engine.observe(prior, event, now)
            except DuplicateEvent:
                # Redelivered after a crash: its state was applied (and its changelog sent),
                # its prediction and snapshot may not have been (a crash between the two):
                # they are sent again, scored on the features the state gives it. Outputs
                # are at least once; the learner learns each event id once.
                self._duplicates.inc()
                replayed += 1
                features = self.engine.features_for(prior, event)
                state = None
            except LateEvent as exc:
                self._late.inc()
                self.deadletters.send(rec, InvalidRecord({exc.field: f"late: {exc}"}), "event",
                                      event_id=spec.event_id_of(event),
                                      entity=entity_ref(entity))
                continue
            except FutureEvent as exc:
                self.deadletters.send(rec, InvalidRecord({exc.field: f"future: {exc}"}),
                                      "event", "future", event_id=spec.event_id_of(event),
                                      entity=entity_ref(entity))
                continue
            except UnsafeFeatures as exc:
                # Neither scored nor remembered: the entity's state stays as it was.
                self.deadletters.send(
                    rec, InvalidRecord({f"features.{k}": v for k, v in exc.errors.items()}),
                    "event", "unsafe", event_id=spec.event_id_of(event),
                    entity=entity_ref(entity))
                continue
            if state is not None and not erased:  # scored, not remembered: erased before
                states[entity] = state
                newest[entity] = (rec, features, event_time)
            scored.append(_Scored(rec, entity, spec.event_id_of(event), event_time, features))
        if self.space is not None and scored:
            await self.space.add_neighbour_features([s.features for s in scored])
        await self._write(states, newest)
        self._emit(scored)
        self._ok.inc(len(scored) - replayed)
        if scored:
            self._seconds.observe((time.perf_counter() - started) / len(scored))

    async def _write(self, states: dict[str, Any], newest: dict[str, tuple]) -> None:
        """Each entity's newest state to the table (one changelog record per entity and
        batch) and, with its newest features, to Redis."""
        rows = []
        for entity, (rec, features, event_time) in newest.items():
            self.table.set(entity, states[entity], rec)
            rows.append((entity, features, states[entity], event_time))
        self.table.flush()
        if rows:
            # Retried here, not by the batch's reader: the table holds the batch's states
            # already, so a batch handled again would find its events applied.
            await retried(lambda: self.features.put_many(rows), STORE_ERRORS,
                          f"{self.spec.name}: writing {len(rows)} feature rows to Redis")

    def _emit(self, scored: list[_Scored]) -> None:
        """Each event's prediction, and its snapshot: those of one batch that go to the
        same join partition travel as one record (``B``, a JSON array), since a Kafka
        record costs the join's consumer far more than its bytes do."""
        snap = self.live.current
        model_version = snap.version if snap else "none"
        now = time.time()
        to_join: dict[tuple[int, int], list[bytes]] = {}  # (join, events partition) -> ...
        for s in scored:
            score = predict(snap.model, self.spec.task, s.features) if snap else 0.0
            self.outputs.send(self.topics.predictions, s.entity.encode(),
                              Prediction.model_construct(
                                  event_id=s.event_id, entity=s.entity,
                                  event_time=s.event_time, score=score,
                                  model_version=model_version, scored_at=now).to_json())
            source = s.record.message.partition
            to_join.setdefault((self.join_partition(s.event_id), source), []).append(
                Snapshot.model_construct(
                    event_id=s.event_id, entity=s.entity, event_time=s.event_time,
                    features=s.features, score=score, model_version=model_version).to_json())
            # Kafka's create time is when the producer sent it: freshness is measured from it.
            self._freshness.observe(max(0.0, now - s.record.message.timestamp))
        for (partition, source), snapshots in to_join.items():
            # Keyed by the events' partition: the join's event time is per source.
            self.outputs.send(self.topics.join, str(source).encode(),
                              b"B[" + b",".join(snapshots) + b"]", partition=partition)
        self._predictions.inc(len(scored))


def _key_error(key: bytes | None, field: str, entity: str) -> str:
    """Why a record's key disqualifies it: an entity's events must share a partition, where
    its state is (one keyed otherwise would read and fork another partition's state).

    >>> _key_error(None, "card_id", "c-1")
    "missing: events are keyed by their card_id ('c-1')"
    """
    if key is None:
        return f"missing: events are keyed by their {field} ({entity!r})"
    return (f"{key.decode(errors='replace')!r} is not the event's {field} ({entity!r}): "
            f"events are keyed by it")
