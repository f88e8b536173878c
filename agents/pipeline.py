"""The agents of one pipeline: score events, join snapshots with labels, learn.

::

    <p>.events --score--> <p>.predictions, Redis features, <p>.join (snapshot)
    <p>.labels --forward--> <p>.join (label)
    <p>.join   --join--> <p>.training      (table of pending snapshots/labels by event id)
    <p>.training --learn--> model snapshots + checkpoint in Redis (one partition: one writer)
                            drift detections --> <p>.control
    <p>.control --control--> promotions and rollbacks swap the learner's model
    <p>.training --embed--> Milvus: labeled-event vectors, entity profiles (agents/embedding.py)
    anything malformed --> <p>.deadletter, with the reason

Every agent runs with concurrency 1: faust-streaming can commit past an in-flight
message with more (its issue 606), and at-least-once matters here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import json
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from agents.faust_fixes import GapFiller, as_current_event, every, retried
from driftline.config import Settings
from driftline.stores import (
    EmbeddingStore,
    FeatureStore,
    LiveModel,
    RedisKeys,
    SnapshotStore,
    connect,
)
from driftline.topic_reader import read_range, watermarks
from driftline.vectors import EmbeddingSpace
from monitoring import metrics as m
from monitoring.logs import annotate, bound, entity_ref
from online_models import evaluation
from online_models.learner import OnlineLearner, revision_of
from online_models.spec import build_model, predict
from streams.declarations import PipelineSpec
from streams.engine import DuplicateEvent, FeatureEngine, LateEvent
from streams.schemas import (
    ControlEvent,
    DeadLetter,
    InvalidRecord,
    Prediction,
    Snapshot,
    TrainingExample,
    parse,
)
from streams.topics import PipelineTopics

log = logging.getLogger(__name__)
# How often each pipeline reports its consumer lag.
LAG_SECONDS = 5.0
# A reader idle this long, Faust's read positions are compared with what it handled.
END_QUIET_SECONDS = 5.0


class UnreadTraining(RuntimeError):
    """Training examples that exist could not be read (Kafka slow or unreachable)."""


@dataclass
class _Reader:
    """An agent's input: its topic, its handler, and the lock that keeps the records it
    handles in offset order, whether they come from the stream or from a hole."""

    topic: str
    handle: Callable
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _raw_topic(app: faust.App, name: str) -> faust.TopicT:
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


class PipelineAgents:
    """Registers the agents, tables and timers of ``pipeline`` on ``app``."""

    def __init__(self, app: faust.App, settings: Settings, pipeline: PipelineSpec) -> None:
        self.app = app
        self.s = settings
        self.p = pipeline
        self.engine = FeatureEngine(pipeline)
        self.name = pipeline.name
        self.topics = PipelineTopics.for_spec(pipeline, settings.namespace)
        t = self.topics
        self.events_topic = _raw_topic(app, t.events)
        self.labels_topic = _raw_topic(app, t.labels)
        self.join_topic = _raw_topic(app, t.join)
        self.training_topic = _raw_topic(app, t.training)
        self.predictions_topic = _raw_topic(app, t.predictions)
        self.deadletter_topic = _raw_topic(app, t.deadletter)
        self.control_topic = _raw_topic(app, t.control)

        table_opts: dict[str, Any] = dict(partitions=settings.partitions, key_type=str)
        # Per-entity window state; its changelog restores it after a restart.
        self.entity_state = app.Table(f"{self.name}-entity-state", default=None, **table_opts)
        # Snapshots waiting for their label (or labels for their snapshot), by event id.
        self.pending = app.Table(f"{self.name}-pending-join", default=None, **table_opts)
        self._expiry: dict[int, list[tuple[float, str]]] = {}
        self._expiry_loaded = False
        # Per join partition: the newest snapshot event time seen. Labels do not move it:
        # their timestamps come from another system's clock.
        self._watermark: dict[int, float] = {}
        self.gaps = GapFiller(app, settings)
        self._readers: dict[str, _Reader] = {}  # by kind, as each agent starts

        self.keys = RedisKeys(settings.redis_prefix, self.name)
        self.learner: OnlineLearner | None = None
        # Learning and a model swap never interleave.
        self._learning = asyncio.Lock()
        self._published_updates = 0
        self._published_at = 0.0
        self.live: LiveModel | None = None

        app.agent(self.events_topic, name=f"{self.name}-score")(self.score_events)
        app.agent(self.labels_topic, name=f"{self.name}-labels")(self.forward_labels)
        app.agent(self.join_topic, name=f"{self.name}-join")(self.join)
        app.agent(self.training_topic, name=f"{self.name}-learn")(self.learn)
        app.agent(self.control_topic, name=f"{self.name}-control")(self.control)
        app.task(self.on_start)
        app.on_partitions_revoked.connect(self._on_revoked)
        every(app, settings.model_refresh_seconds)(self.refresh_model)
        every(app, settings.snapshot_seconds)(self.publish_if_due)
        every(app, settings.reconcile_seconds)(self.reconcile)
        every(app, LAG_SECONDS)(self.report_lag)
        every(app, END_QUIET_SECONDS)(self.catch_up_ends)
        # Series that count rare things exist at 0 from the start: Prometheus' increase()
        # misses the first count of a series that appears at 1.
        for kind in ("concept", "feature"):
            m.DRIFT_DETECTIONS.labels(self.name, kind)
        for reason in ("drift", "manual", "rollback"):
            m.MODEL_PROMOTIONS.labels(self.name, reason)
        if pipeline.embeddings is not None:
            from agents.embedding import EmbeddingAgent

            self.embedding = EmbeddingAgent(self)

    # ---- lifecycle -------------------------------------------------------------------

    @functools.cached_property
    def redis(self):
        # Made on first use, inside the worker's event loop.
        return connect(self.s)

    @functools.cached_property
    def feature_store(self) -> FeatureStore:
        return FeatureStore(self.redis, self.keys)

    @functools.cached_property
    def snapshots(self) -> SnapshotStore:
        return SnapshotStore(self.redis, self.keys)

    @functools.cached_property
    def space(self) -> EmbeddingSpace | None:
        """The neighbour feature's view of Milvus, when the pipeline declares the feature
        (no Milvus connection on the scoring path otherwise)."""
        if self.p.embeddings is None or self.p.embeddings.neighbour_feature is None:
            return None
        return EmbeddingSpace(self.s, self.p, self.embedding_store, "worker")

    async def on_start(self) -> None:
        """Make sure a model exists before the first event is scored."""
        await self.snapshots.publish(build_model(self.p.model), "v0.0", only_if_absent=True)
        self.live = LiveModel(self.snapshots)
        if await self.live.refresh():
            m.serving(self.name, "worker", revision_of(self.live.current.version), None)
        # Open the registry (MLflow's import, the database) in the background now, so that a
        # promotion pauses learning for the load of one model only.
        asyncio.get_running_loop().run_in_executor(None, self._open_registry)

    async def report_lag(self, *_: Any) -> None:
        """``driftline_consumer_lag`` of each partition of this pipeline's inputs this worker
        holds: the partition's end minus the next offset to process (the learner's own for
        the training topic). The end is asked of the broker, not taken from the last fetch:
        a consumer stops fetching a partition whose records it has not drained, so a stuck
        agent would otherwise show a lag frozen where it stopped."""
        consumer = self.app.consumer
        t = self.topics
        reader_of = {t.events: "event", t.labels: "label", t.join: "join",
                     t.training: "training", t.control: "control"}
        mine = [tp for tp in consumer.assignment() if tp.topic in reader_of]
        if not mine:
            return
        try:
            async with asyncio.timeout(LAG_SECONDS):
                ends = await consumer.highwaters(*mine)
        except Exception:  # noqa: BLE001 - Kafka slow or a rebalance under way: next round
            log.debug("%s: could not read partition ends", self.name, exc_info=True)
            return
        for tp in mine:
            end = ends.get(tp)
            if tp.topic == self.topics.training and self.learner is not None \
                    and self.learner.next_offset is not None:
                done = self.learner.next_offset
            else:
                done = self.gaps.next_offset(reader_of[tp.topic], tp.topic, tp.partition)
            if end is not None and done is not None and done >= 0:
                m.CONSUMER_LAG.labels(self.name, tp.topic, str(tp.partition)).set(
                    max(0, end - done))

    async def _on_revoked(self, sender: Any, revoked: Any, **_: Any) -> None:
        self.gaps.forget(revoked)
        for tp in revoked:  # another worker reports it now
            with contextlib.suppress(KeyError):
                m.CONSUMER_LAG.remove(self.name, tp.topic, str(tp.partition))
        if any(tp.topic == self.topics.training for tp in revoked):
            # Another worker learns now; should the partition come back, resume from the
            # checkpoint, not from a learner that stopped somewhere in between.
            self.learner = None

    async def refresh_model(self, *_: Any) -> None:
        before = self.live.current if self.live is not None else None
        if self.live is not None and await self.live.refresh():
            m.MODEL_SWAPS.labels(self.name, "worker").inc()
            m.serving(self.name, "worker", revision_of(self.live.current.version),
                      revision_of(before.version) if before else None)

    @functools.cached_property
    def embedding_store(self) -> EmbeddingStore:
        """The frozen embedder and the erasure register, in Redis."""
        return EmbeddingStore(self.redis, self.keys)

    # ---- events: validate, featurize, score, emit ------------------------------------

    async def score_events(self, stream: faust.StreamT) -> None:
        await self._consume(stream, "event", self._score_one)

    async def _score_one(self, event: faust.EventT) -> None:
        msg = event.message
        started = time.perf_counter()
        record = parse(self.p.event_type, event.value)
        entity = self.p.entity_of(record)
        event_id = self.p.event_id_of(record)
        annotate(event_id=event_id, entity=entity_ref(entity))
        event_time = self.p.time_of(record)
        prior = self.entity_state.get(entity)
        # Read for every event, not from the periodic copy: one event between an erasure
        # and the next refresh would otherwise write the erased history back.
        until = await self.embedding_store.forgotten_until(entity)
        erased = until is not None and event_time <= until
        if erased or (prior and until is not None and prior["newest"] <= until):
            prior = None  # the history before the erasure is not used, nor rebuilt
        try:
            state, features = self.engine.observe(prior, record)
        except DuplicateEvent:
            # Redelivered after a crash: its effects were applied (and sent) already.
            m.DUPLICATE_EVENTS.labels(self.name).inc()
            return
        except LateEvent as exc:
            m.LATE_EVENTS.labels(self.name).inc()
            raise InvalidRecord({exc.field: f"late: {exc}"}) from None
        if self.space is not None:
            await self.space.add_neighbour_feature(features)
        snap = self.live.current if self.live else None
        proba = predict(snap.model, self.p.task, features) if snap else 0.0
        version = snap.version if snap else "none"
        annotate(model_version=version)
        if not erased:  # an event from before the erasure is scored, and not remembered
            self.entity_state[entity] = state
            await self.feature_store.put(entity, features, state, event_time)
        # Kafka's create time is when the producer sent it: freshness is measured from it.
        m.FEATURE_FRESHNESS.labels(self.name).observe(max(0.0, time.time() - msg.timestamp))
        await self.predictions_topic.send(
            key=entity.encode(),
            value=Prediction(
                event_id=event_id,
                entity=entity,
                event_time=event_time,
                score=proba,
                model_version=version,
                scored_at=time.time(),
            ).to_json(),
        )
        await self.join_topic.send(
            key=event_id.encode(),
            value=b"S"
            + Snapshot(
                event_id=event_id,
                entity=entity,
                event_time=event_time,
                features=features,
                score=proba,
                model_version=version,
            ).to_json(),
        )
        m.EVENTS.labels(self.name, "event", "ok").inc()
        m.PREDICTIONS.labels(self.name, "worker").inc()
        m.EVENT_SECONDS.labels(self.name).observe(time.perf_counter() - started)

    # ---- labels: validate and re-key onto the join topic ------------------------------

    async def forward_labels(self, stream: faust.StreamT) -> None:
        await self._consume(stream, "label", self._forward_one)

    async def _forward_one(self, event: faust.EventT) -> None:
        label = parse(self.p.label_type, event.value)
        event_id = self.p.event_id_of(label)
        annotate(event_id=event_id)
        await self.join_topic.send(key=event_id.encode(), value=b"L" + label.to_json())
        m.EVENTS.labels(self.name, "label", "ok").inc()

    # ---- the join: a snapshot meets its label ------------------------------------------

    async def join(self, stream: faust.StreamT) -> None:
        """Stream-stream join by event id, in either arrival order.

        Join records are tagged ``S`` (snapshot) or ``L`` (label). The first to arrive
        waits in ``pending``; the second completes the training example. Entries older
        than the label-delay bound (in event time) are dropped and counted.
        """
        await self._consume(stream, "join", self._join_one)

    async def _join_one(self, event: faust.EventT) -> None:
        value: bytes = event.value
        kind, body = value[:1], value[1:]
        partition = event.message.partition
        self._load_expiry()
        if kind == b"S":
            snap = parse(Snapshot, body)
            annotate(event_id=snap.event_id, model_version=snap.model_version)
            event_id, event_time = snap.event_id, snap.event_time
        else:
            label = parse(self.p.label_type, body)
            event_id, event_time = self.p.event_id_of(label), self.p.label_time_of(label)
        entry = dict(self.pending.get(event_id) or {"p": partition, "t": event_time})
        entry["snapshot" if kind == b"S" else "label"] = body.decode()
        if "snapshot" in entry and "label" in entry:
            snap = parse(Snapshot, entry["snapshot"])
            label = parse(self.p.label_type, entry["label"])
            example = TrainingExample(
                **snap.model_dump(),
                label=self.p.target_of(label),
                label_time=self.p.label_time_of(label),
            )
            await self.training_topic.send(key=event_id.encode(), value=example.to_json())
            if self.pending.get(event_id) is not None:
                del self.pending[event_id]
            m.JOINED.labels(self.name).inc()
        else:
            entry["t"] = min(entry["t"], event_time)
            self.pending[event_id] = entry
            heapq.heappush(self._expiry.setdefault(partition, []), (entry["t"], event_id))
        if kind == b"S":
            self._watermark[partition] = max(self._watermark.get(partition, 0.0), event_time)
        self._expire(partition)

    def _load_expiry(self) -> None:
        """After a restart, rebuild the expiry queues from the recovered table, once."""
        if self._expiry_loaded:
            return
        self._expiry_loaded = True
        for event_id, entry in self.pending.items():
            if entry:
                heapq.heappush(self._expiry.setdefault(entry["p"], []), (entry["t"], event_id))

    def _expire(self, partition: int) -> None:
        # Only keys of the partition being processed: Faust writes a deletion to the
        # changelog partition of the current message.
        queue = self._expiry.get(partition, [])
        bound = self._watermark.get(partition, 0.0) - self.s.label_delay_bound_seconds
        while queue and queue[0][0] < bound:
            _, event_id = heapq.heappop(queue)
            entry = self.pending.get(event_id)
            if entry is None:
                continue
            m.JOIN_EXPIRED.labels(self.name, "snapshot" if "snapshot" in entry else "label").inc()
            del self.pending[event_id]

    # ---- the learner: the one writer of the model -------------------------------------

    async def learn(self, stream: faust.StreamT) -> None:
        await self._consume(stream, "training", self._learn_one)

    async def _learn_one(self, event: faust.EventT) -> None:
        """Apply the next training example, exactly once across crashes.

        The learner's checkpoint holds the offset of the next example it needs, so it does
        not depend on Faust's committed offset: an example before it is in the checkpoint
        already (skipped); one after it means Faust committed past examples the checkpoint
        does not reflect, which are fetched and applied first.
        """
        async with self._learning:
            learner = await self._learner()
            # Dead-lettering this example would leave the unread ones before it to the
            # next example, which at the end of the stream never comes.
            await retried(lambda: self.apply_in_order(
                learner, event, functools.partial(self._apply, learner), reader="learn"),
                UnreadTraining, f"{self.name}: learning")
            await self._report_drift(learner)
            if learner.updates - self._published_updates >= self.s.snapshot_every:
                await self.publish()

    GAP_CHUNK = 5000  # records fetched at a time when closing a gap

    async def apply_in_order(self, cursor: Any, event: faust.EventT,
                             apply: Callable[[bytes, int], None], reader: str) -> None:
        """Apply a training-topic record to ``cursor`` (anything with a ``next_offset``
        that ``apply`` moves on) exactly once, in offset order.

        A record before ``cursor.next_offset`` is in the cursor's checkpoint already and is
        skipped; a record after it means Faust committed past records the checkpoint does
        not reflect, which are fetched (:meth:`fetch_training`) and applied first.
        """
        msg = event.message
        if cursor.next_offset is None:
            cursor.next_offset = msg.offset
        if msg.offset < cursor.next_offset:
            m.LABELS_REPLAYED.labels(self.name, reader, "skipped").inc()
            return
        while msg.offset > cursor.next_offset:
            end = min(msg.offset, cursor.next_offset + self.GAP_CHUNK)
            for rec in await self.fetch_training(cursor, end, reader):
                try:
                    apply(rec.value, rec.offset)
                except InvalidRecord as exc:
                    await self.dead_letter(rec.topic, rec.partition, rec.offset, rec.key,
                                           rec.value, exc, "training", "invalid")
        apply(event.value, msg.offset)

    async def fetch_training(self, cursor: Any, end: int, reader: str) -> list:
        """The training records from ``cursor.next_offset`` up to ``end`` (exclusive).

        Records that retention deleted are lost: they are counted
        (``driftline_labels_replayed_total{action="lost"}``) and the cursor moves past them.
        A failed or partial read raises :class:`UnreadTraining`: the caller retries rather
        than skip examples.
        """
        start = cursor.next_offset
        topic = self.topics.training
        try:
            records = await asyncio.to_thread(read_range, self.s, topic, 0, start, end)
            low = None
            if not records or records[0].offset > start:
                low, _ = await asyncio.to_thread(watermarks, self.s, topic, 0)
        except Exception as exc:  # noqa: BLE001 - whatever Kafka raised, the caller retries
            raise UnreadTraining(f"could not read training examples {start}..{end - 1}: "
                                 f"{exc!r}") from exc
        if low is not None:
            if low > start:
                lost = min(low, end) - start
                log.error("%s: %d training examples (offsets %d..%d) were deleted by retention "
                          "before the %s reader applied them", self.name, lost, start,
                          start + lost - 1, reader)
                m.LABELS_REPLAYED.labels(self.name, reader, "lost").inc(lost)
                cursor.next_offset = start + lost
        if records and records[-1].offset >= end - 1:
            m.LABELS_REPLAYED.labels(self.name, reader, "fetched").inc(len(records))
            return records
        if cursor.next_offset >= end:
            return []  # all of it deleted by retention
        raise UnreadTraining(f"fetched training examples {start}..{end - 1} only partially")

    def _apply(self, learner: OnlineLearner, value: bytes, offset: int) -> None:
        # The offset moves on even for an invalid example: it is dead-lettered, not retried.
        learner.next_offset = offset + 1
        example = parse(TrainingExample, value)
        if learner.learn(example, update_model=offset > learner.learned_through):
            m.LABELS_LEARNED.labels(self.name).inc()
        else:
            m.LABEL_DUPLICATES.labels(self.name).inc()

    async def _learner(self) -> OnlineLearner:
        """The learner, restored from its checkpoint on first use."""
        if self.learner is None:
            learner = None
            try:
                learner = await self.snapshots.load_checkpoint()
            except (pickle.UnpicklingError, AttributeError, ImportError, TypeError):
                # Written by an incompatible version. (A Redis error propagates: the record
                # is retried from the checkpoint's offset once Redis answers.)
                log.exception("%s: unreadable learner checkpoint, starting from the snapshot",
                              self.name)
            if learner is None:
                snap = await self.snapshots.load()
                learner = OnlineLearner(self.p, snap.model if snap else build_model(self.p.model),
                                        metric_window=self.s.metric_window)
            learner.add_fallback(self.p)
            self.learner = learner
            self._published_updates = learner.updates
            log.info("%s: learner at %s, next training offset %s", self.name, learner.version,
                     learner.next_offset)
        return self.learner

    async def _report_drift(self, learner: OnlineLearner) -> None:
        for d in learner.pop_detections():
            m.DRIFT_DETECTIONS.labels(self.name, d.kind).inc()
            log.warning("%s: %s drift detected by %s at %s: %s", self.name, d.kind, d.detector,
                        learner.version, d.evidence,
                        extra={"model_version": learner.version, "drift": d.kind})
            await self.send_control(ControlEvent(
                kind=f"{d.kind}_drift", pipeline=self.name, at=time.time(),
                model_version=learner.version, offset=learner.next_offset - 1,
                reason=d.detector, evidence={"seen": d.seen, **d.evidence}))

    async def send_control(self, event: ControlEvent) -> None:
        await self.control_topic.send(key=self.name.encode(), value=event.to_json())

    async def publish_if_due(self, *_: Any) -> None:
        # Under the learning lock: two publications in flight at once could land in Redis
        # in the wrong order and serve an older snapshot after a newer one.
        async with self._learning:
            if self.learner and self.learner.updates > self._published_updates:
                await self.publish()

    async def publish(self) -> None:
        """Publish the model to the scorers and checkpoint the learner, atomically.
        Callers hold ``self._learning``."""
        learner = self.learner
        await self.snapshots.publish(learner.model, learner.version, checkpoint=learner,
                                     fallback=learner.fallback,
                                     fallback_examples=learner.fallback_examples)
        self._published_updates = learner.updates
        self._published_at = time.time()
        by_version = learner.metrics_by_version()
        for revision, stats in by_version.items():
            for name, value in stats.items():
                m.PREQUENTIAL_BY_VERSION.labels(self.name, revision, name).set(value)
        current = by_version.get(f"v{learner.revision}", {})
        for name in self.p.metrics:
            if name in current:
                m.PREQUENTIAL.labels(self.name, name).set(current[name])
        drift_stats = learner.feature_drift.last_statistics()
        for feature, stats in drift_stats.items():
            for stat, value in stats.items():
                m.FEATURE_DRIFT.labels(self.name, feature, stat).set(value)
        m.MODEL_UPDATES.labels(self.name).set(learner.updates)
        m.MODEL_REVISION.labels(self.name).set(learner.revision)
        m.SNAPSHOTS.labels(self.name).inc()
        await self.redis.hset(
            self.keys.learner,
            mapping={
                "version": learner.version,
                "revision": learner.revision,
                "updates": learner.updates,
                "duplicates": learner.duplicates,
                # Not known before the learner's first example: "" then.
                "next_offset": "" if learner.next_offset is None else learner.next_offset,
                "published_at": repr(self._published_at),
                "metrics": json.dumps(by_version),
                "feature_drift": json.dumps(drift_stats),
            },
        )

    # ---- control: promotions and rollbacks swap the learner's model ------------------

    async def control(self, stream: faust.StreamT) -> None:
        await self._consume(stream, "control", self._control_one)

    async def _control_one(self, event: faust.EventT) -> None:
        ev = parse(ControlEvent, event.value)
        m.CONTROL_EVENTS.labels(self.name, ev.kind).inc()
        if ev.kind == "promoted" and ev.registry_version is not None:
            await self._swap_to(ev)

    async def reconcile(self, *_: Any) -> None:
        """Serve the registry's champion if the learner does not: a promotion whose control
        event was dead-lettered (its model could not be loaded then), or an alias moved by
        hand. The online model before any promotion is left alone while the champion is
        only its own registered copy (the retrainer's bootstrap)."""
        learner = self.learner
        if learner is None:
            return
        try:
            champion = await asyncio.to_thread(self.registry.champion, self.name)
            if champion is None or champion.version == learner.revision:
                return
            if learner.revision == 0 and champion.lineage.reason == "bootstrap":
                return
            log.warning("%s: serving v%d but the registry's champion is v%d: swapping it in",
                        self.name, learner.revision, champion.version)
            await self._swap_to(ControlEvent(kind="promoted", pipeline=self.name,
                                             at=time.time(), reason="reconcile",
                                             registry_version=champion.version))
        except Exception:  # noqa: BLE001 - the next round tries again
            log.warning("%s: could not reconcile with the registry", self.name, exc_info=True)

    async def _swap_to(self, ev: ControlEvent) -> None:
        """Make registry version ``ev.registry_version`` the model learned and served.

        Its training data ends at some offset of the training topic; the examples the
        learner applied after that (at most one retrain window of them) are applied to it
        too before the swap, so it starts as up to date as the model it replaces.
        """
        async with self._learning:
            learner = await self._learner()
            if learner.revision == ev.registry_version:
                return  # redelivered: swapped already
            started = time.perf_counter()
            model, lineage = await asyncio.to_thread(self._load_registered, ev.registry_version)
            window, next_offset = self.p.retrain.window, learner.next_offset or 0
            end = lineage.end_offset if lineage.end_offset is not None else -1
            catch_from = max(end + 1, next_offset - window, 0)
            first = catch_from
            if lineage.start_offset is not None:  # its data's newest rows: the reference
                first = min(max(lineage.start_offset, end + 1 - self.p.drift.reference_size),
                            catch_from)
            records = await asyncio.to_thread(read_range, self.s, self.topics.training, 0,
                                              first, next_offset)
            reference, rows, seen, caught_up = [], [], set(), 0
            for rec in records:
                try:
                    example = parse(TrainingExample, rec.value)
                except InvalidRecord:
                    continue
                rows.append(example.features)
                if rec.offset <= end:
                    reference.append(example.features)
                elif rec.offset >= catch_from and example.event_id not in seen:
                    seen.add(example.event_id)
                    model.learn_one(example.features,
                                    evaluation.as_label(self.p.task, example.label))
                    caught_up += 1
            # Examples up to `end` that the learner has not reached yet (it lags the
            # retrainer) are in the new model already: they will not be learned again.
            learner.swap(model, ev.registry_version,
                         (reference or rows)[-self.p.drift.reference_size:],
                         learned_through=end)
            await self.publish()
            m.MODEL_PROMOTIONS.labels(self.name, ev.reason or "unknown").inc()
            log.warning("%s: now serving registry version %d (%s), caught up on %d examples "
                        "in %.2fs", self.name, ev.registry_version, ev.reason, caught_up,
                        time.perf_counter() - started)

    def _load_registered(self, version: int):
        registry = self.registry
        return registry.load(self.name, version), registry.get(self.name, version).lineage

    def _open_registry(self) -> None:
        try:
            self.registry  # noqa: B018 - opening it is the point
        except Exception:  # noqa: BLE001 - a promotion will retry and report it
            log.warning("%s: the model registry is not reachable yet", self.name, exc_info=True)

    @functools.cached_property
    def registry(self):
        from online_models.registry import Registry

        return Registry.from_settings(self.s)

    # ---- the consuming loop and dead letters ------------------------------------------

    async def _consume(self, stream: faust.StreamT, kind: str, handle) -> None:
        """Run ``handle`` on each event; nothing that goes wrong stops the agent or is lost.

        Records Faust skipped before this one (see :class:`GapFiller`) are handled first;
        those it skipped at a partition's end, by :meth:`catch_up_ends`.
        """
        reader = self._readers[kind] = _Reader(stream.channel.get_topic_name(), handle)
        async for event in stream.events():
            async with reader.lock:
                if self.gaps.handled(kind, event.message):
                    continue  # fetched as a hole already
                for missed in await self.gaps.missed_before(kind, event):
                    m.SKIPPED_RECOVERED.labels(self.name, kind).inc()
                    await self._handle_one(missed, kind, handle)
                await self._handle_one(event, kind, handle)

    async def catch_up_ends(self, *_: Any) -> None:
        """Handle the records at a partition's end that Faust skipped: no later record
        comes to reveal them (see :class:`GapFiller`). Only while the flow runs: during a
        rebalance or the tables' recovery, records wait for Faust."""
        if not self.app.flow_control.is_active() \
                or not self.app.tables.recovery.completed.is_set():
            return
        assigned = self.app.consumer.assignment()
        for kind, reader in list(self._readers.items()):
            for tp in assigned:
                if tp.topic != reader.topic:
                    continue
                try:
                    missed = await self.gaps.missed_at_end(kind, tp.topic, tp.partition,
                                                           quiet=END_QUIET_SECONDS)
                except Exception:  # noqa: BLE001 - Kafka did not answer: the next round
                    log.warning("%s: could not read the end of %s[%d]", kind, tp.topic,
                                tp.partition, exc_info=True)
                    continue
                async with reader.lock:
                    if not self.app.flow_control.is_active() \
                            or tp not in self.app.consumer.assignment():
                        return  # a rebalance began while the records were fetched
                    for rec in missed:
                        if not self.gaps.handled(kind, rec.message):
                            m.SKIPPED_RECOVERED.labels(self.name, kind).inc()
                            with as_current_event(rec):
                                await self._handle_one(rec, kind, reader.handle)

    async def _handle_one(self, event, kind: str, handle) -> None:
        msg = event.message
        where = (msg.topic, msg.partition, msg.offset, event.key, event.value)
        # Every line logged while this record is handled says which record it concerns;
        # the handler adds the event id and model version once it knows them.
        with bound(pipeline=self.name, kind=kind, topic=msg.topic, partition=msg.partition,
                   offset=msg.offset):
            try:
                await handle(event)
            except InvalidRecord as exc:
                await self.dead_letter(*where, exc, kind, "invalid")
            except Exception as exc:  # noqa: BLE001 - an outage or a bug: park, carry on
                log.exception("%s: processing failed, dead-lettering", kind)
                await self.dead_letter(
                    *where, InvalidRecord({"$": f"processing failed: {exc!r}"}), kind, "error")
            self.gaps.done(kind, msg)

    async def dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None,
                          value: bytes | None, exc: InvalidRecord, kind: str,
                          cause: str) -> None:
        reason = "; ".join(f"{f}: {r}" for f, r in exc.errors.items())
        letter = DeadLetter(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key=key.decode(errors="replace") if key else None,
            value=(value or b"").decode(errors="replace"),
            error=reason,
            fields=list(exc.errors),
            at=time.time(),
        )
        await self.deadletter_topic.send(key=key, value=letter.to_json())
        m.EVENTS.labels(self.name, kind, "deadletter").inc()
        m.DEADLETTERS.labels(self.name, f"{cause}_{kind}").inc()
        log.warning("dead-lettered %s %s:%s@%s: %s", kind, topic, partition, offset, reason)
