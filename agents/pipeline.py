"""The agents of one pipeline, wired: who reads which topic, with which handler.

::

    <p>.events   --score--> entity state (table), Redis features, <p>.predictions,
                            <p>.join (snapshots)                     agents/scoring.py
    <p>.labels + <p>.join --join--> <p>.training (pending table)     agents/join.py
    <p>.training --learn--> served model + checkpoint in Redis       agents/learning.py
                 --embed--> Milvus vectors and profiles              agents/embedding.py
                 (tailed by the worker holding <p>.control: agents/training_log.py)
    <p>.control  --control--> promotions and rollbacks               agents/promotions.py
    anything malformed --> <p>.deadletter, with the reason           agents/consume.py

Each agent takes its records in batches (:class:`~agents.consume.BatchReader`); each
handler is a module of its own that knows nothing of Faust's streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import faust
from faust.types import TP

from agents.consume import BatchReader, DeadLetters
from agents.embedding import EmbeddingAgent
from agents.faust_fixes import GapFiller, every
from agents.join import LabelJoin
from agents.learning import Learning
from agents.outputs import Outputs
from agents.promotions import ModelSwaps
from agents.scoring import EventScorer
from agents.tables import CachedTable
from agents.training_log import TrainingLog, TrainingTail
from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import PipelinePartitions
from driftline.adapters.stores import (
    EmbeddingStore,
    FeatureStore,
    LiveModel,
    ModelSnapshot,
    RedisKeys,
    SnapshotStore,
    connect,
)
from driftline.adapters.topic_reader import watermarks
from driftline.adapters.vectors import EmbeddingSpace
from monitoring import metrics
from online_models.learner import revision_of
from online_models.spec import build_model
from streams.declarations import PipelineSpec
from streams.topics import PipelineTopics

log = logging.getLogger(__name__)
# How often each pipeline reports its consumer lag.
LAG_SECONDS = 5.0
# A reader idle this long, Faust's read positions are compared with what it handled.
END_QUIET_SECONDS = 5.0
# Entity states each worker keeps decoded in memory (a card's is a few KB), and pending
# join entries (a snapshot's is about 1 KB): most labels find theirs still in memory.
ENTITY_CACHE = 50_000
PENDING_CACHE = 100_000


def _raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw")


class PipelineAgents:
    """Registers the agents, tables and timers of ``spec`` on ``app``, with its keyed
    topics partitioned as ``partitions`` says (as its input topics are)."""

    def __init__(self, app: faust.App, settings: Settings, spec: PipelineSpec,
                 outputs: Outputs, partitions: PipelinePartitions) -> None:
        self.app = app
        self.settings = settings
        self.spec = spec
        self.name = spec.name
        self.topics = topics = PipelineTopics.for_spec(spec, settings.namespace)
        self.keys = RedisKeys(settings.redis_prefix, spec.name)
        self.outputs = outputs
        self.deadletters = DeadLetters(outputs, spec.name, topics.deadletter)
        self.gaps = GapFiller(app, settings)
        self.redis = connect(settings)  # connects lazily, inside the worker's loop
        self.snapshots = SnapshotStore(self.redis, self.keys)
        self.embedding_store = EmbeddingStore(self.redis, self.keys)
        self.live = LiveModel(self.snapshots)

        # Per-entity window state, written by events; its changelog restores it after a
        # restart.
        entity_state = app.Table(f"{self.name}-entity-state", default=None, key_type=str,
                                 partitions=partitions.events)
        # Snapshots waiting for their label (or labels for their snapshot), by event id,
        # written by labels and join records.
        pending = app.Table(f"{self.name}-pending-join", default=None, key_type=str,
                            partitions=partitions.labels)
        # The worker's own topics, each with the count and the input it must be
        # co-partitioned with: a table's partition is that of the record writing it.
        self.co_partitioned = {
            topics.join: (partitions.labels, topics.labels),
            entity_state.changelog_topic_name: (partitions.events, topics.events),
            pending.changelog_topic_name: (partitions.labels, topics.labels),
        }

        space = None
        if spec.embeddings is not None and spec.embeddings.neighbour_feature is not None:
            space = EmbeddingSpace(settings, spec, self.embedding_store, "worker")
        entity_states = CachedTable(entity_state, ENTITY_CACHE, outputs)
        self.scorer = EventScorer(spec, topics, entity_states,
                                  FeatureStore(self.redis, self.keys),
                                  self.embedding_store, self.live, space, outputs,
                                  self.deadletters, partitions.labels)
        pending_entries = CachedTable(pending, PENDING_CACHE, outputs)
        self.join = LabelJoin(spec, topics, pending_entries, outputs, self.deadletters,
                              self.scorer.join_partition, spec.label_delay_bound,
                              partitions.events)
        training_log = TrainingLog(settings, spec.name, topics.training, self.deadletters)
        self.learning = Learning(settings, spec, topics, self.redis, self.snapshots,
                                 training_log, outputs, self.deadletters)
        self.learning.on_published = self._serve
        self.swaps = ModelSwaps(settings, spec, topics.training, self.learning,
                                self.deadletters)
        self.embedding = None
        if spec.embeddings is not None:
            self.embedding = EmbeddingAgent(settings, spec, self.embedding_store,
                                            training_log, self.redis)
            every(app, settings.vector_flush_seconds)(self.embedding.flush_if_due)

        self.readers: dict[str, BatchReader] = {}
        self._agent("score", _raw_topic(app, topics.events), self.scorer.handle)
        self._agent("join", _raw_topic(app, topics.join, topics.labels), self.join.handle)
        self._agent("control", _raw_topic(app, topics.control), self.swaps.handle)
        # The training log is tailed, not consumed through Faust (agents/training_log.py),
        # by the worker Faust gives the one-partition control topic: promotions and
        # learning happen in one process.
        self.learn_reader = self._reader("learn", self._learn)
        self._leader_tp = TP(topics.control, 0)
        self._tail: TrainingTail | None = None
        self._tail_task: asyncio.Task | None = None
        app.task(self.on_start)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_before_shutdown.connect(self._on_shutdown)
        every(app, settings.model_refresh_seconds)(self.refresh_model)
        every(app, settings.snapshot_seconds)(self.learning.publish_if_due)
        every(app, settings.checkpoint_seconds)(self.learning.checkpoint_if_due)
        every(app, settings.reconcile_seconds)(self.swaps.reconcile)
        every(app, LAG_SECONDS)(self.report_lag)
        every(app, END_QUIET_SECONDS)(self.catch_up_ends)
        # Series that count rare things exist at 0 from the start: Prometheus' increase()
        # misses the first count of a series that appears at 1.
        for kind in ("concept", "feature"):
            metrics.DRIFT_DETECTIONS.labels(pipeline=self.name, kind=kind)
        for reason in ("drift", "manual", "rollback"):
            metrics.MODEL_PROMOTIONS.labels(pipeline=self.name, reason=reason)
        metrics.LABELS_FORWARDED.labels(pipeline=self.name)

    def _reader(self, kind: str, handle) -> BatchReader:
        return BatchReader(kind, handle, pipeline=self.name, gaps=self.gaps,
                           outputs=self.outputs, deadletters=self.deadletters,
                           batch=self.settings.worker_batch)

    def _agent(self, kind: str, topic: faust.TopicT, handle) -> None:
        reader = self.readers[kind] = self._reader(kind, handle)
        reader.topics = frozenset(topic.topics)
        self.app.agent(topic, name=f"{self.name}-{kind}")(reader.run)

    async def _learn(self, records) -> None:
        await self.learning.handle(records)
        if self.embedding is not None:
            self.embedding.on_records(records)

    # ---- lifecycle -------------------------------------------------------------------

    async def on_start(self) -> None:
        """Make sure a model exists before the first event is scored."""
        await self.snapshots.publish(build_model(self.spec.model), "v0.0", only_if_absent=True)
        if await self.live.refresh():
            metrics.serving(self.name, "worker", revision_of(self.live.current.version), None)

    async def refresh_model(self, *_: Any) -> None:
        """Serve a snapshot another worker's learner published (this one's are handed
        over at once, :meth:`_serve`)."""
        before = self.live.current
        if await self.live.refresh():
            self._swapped(before)

    def _serve(self, snap: ModelSnapshot) -> None:
        before = self.live.current
        if self.live.adopt(snap):
            self._swapped(before)

    def _swapped(self, before: ModelSnapshot | None) -> None:
        snap = self.live.current
        metrics.swapped(self.name, "worker", snap.oldest_label_at)
        metrics.serving(self.name, "worker", revision_of(snap.version),
                        revision_of(before.version) if before else None)

    async def _on_revoked(self, sender: Any, revoked: Any, **_: Any) -> None:
        self.gaps.forget(revoked)
        self.scorer.table.clear()
        self.join.reload()
        for tp in revoked:  # another worker reports it now
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self.name, tp.topic, str(tp.partition))
        if self._leader_tp in revoked:
            await self._stop_learning()

    async def _on_assigned(self, sender: Any, assigned: Any, **_: Any) -> None:
        # The tables' contents change with the partitions (recovered before any record
        # of them is handled): what was read from them is read again.
        self.scorer.table.clear()
        self.join.reload()
        if self._leader_tp in assigned and self._tail_task is None:
            self._tail_task = asyncio.create_task(self._tail_training())

    async def _on_shutdown(self, *_: Any, **__: Any) -> None:
        await self._stop_learning()

    async def _tail_training(self) -> None:
        """Learn from the training log while this worker leads; a failure to read (Kafka
        or Redis down) starts the tail again, from the learner's cursor."""
        while self._tail_task is not None:
            self._tail = TrainingTail(self.settings, self.topics.training,
                                      self._learner_offset, self.learn_reader.handle_batch)
            try:
                await self._tail.run()
                return
            except Exception:  # noqa: BLE001 - retried from the cursor
                log.warning("%s: tailing the training log failed; again in 1s", self.name,
                            exc_info=True)
                await asyncio.sleep(1.0)

    async def _learner_offset(self) -> int | None:
        async with self.learning.lock:
            return (await self.learning.restore()).next_offset

    async def _stop_learning(self) -> None:
        """Another worker learns now (or none, at shutdown): finish the batch in hand,
        then forget the learner; should the lead come back, it resumes from the
        checkpoint, not from a learner stopped somewhere in between."""
        task, self._tail_task = self._tail_task, None
        if task is None:
            return
        if self._tail is not None:
            self._tail.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with self.learning.lock:
            self.learning.forget()
        if self.embedding is not None:
            await self.embedding.forget()

    async def report_lag(self, *_: Any) -> None:
        """``driftline_consumer_lag`` of each partition of this pipeline's inputs this worker
        holds: the partition's end minus the next offset to process (the learner's own for
        the training topic). The end is asked of the broker, not taken from the last fetch:
        a consumer stops fetching a partition whose records it has not drained, so a stuck
        agent would otherwise show a lag frozen where it stopped."""
        consumer = self.app.consumer
        reader_of = {topic: kind for kind, reader in self.readers.items()
                     for topic in reader.topics}
        mine = [tp for tp in consumer.assignment() if tp.topic in reader_of]
        try:
            async with asyncio.timeout(LAG_SECONDS):
                ends = await consumer.highwaters(*mine) if mine else {}
        except Exception:  # noqa: BLE001 - Kafka slow or a rebalance under way: next round
            log.debug("%s: could not read partition ends", self.name, exc_info=True)
            return
        for tp in mine:
            end = ends.get(tp)
            done = self.gaps.next_offset(reader_of[tp.topic], tp.topic, tp.partition)
            if end is not None and done is not None and done >= 0:
                metrics.CONSUMER_LAG.labels(pipeline=self.name, topic=tp.topic,
                                            partition=str(tp.partition)).set(max(0, end - done))
        learner = self.learning.learner
        if learner is not None and learner.next_offset is not None:
            _, end = await asyncio.to_thread(watermarks, self.settings, self.topics.training, 0)
            metrics.CONSUMER_LAG.labels(pipeline=self.name, topic=self.topics.training,
                                        partition="0").set(max(0, end - learner.next_offset))

    async def catch_up_ends(self, *_: Any) -> None:
        """Handle the records at a partition's end that Faust skipped: no later record
        comes to reveal them (see :class:`~agents.faust_fixes.GapFiller`). Only while the
        flow runs: during a rebalance or the tables' recovery, records wait for Faust."""
        if not self.app.flow_control.is_active() \
                or not self.app.tables.recovery.completed.is_set():
            return
        assigned = self.app.consumer.assignment()
        for kind, reader in self.readers.items():
            for tp in assigned:
                if tp.topic not in reader.topics:
                    continue
                try:
                    missed = await self.gaps.missed_at_end(kind, tp.topic, tp.partition,
                                                           quiet=END_QUIET_SECONDS)
                except Exception:  # noqa: BLE001 - Kafka did not answer: the next round
                    log.warning("%s: could not read the end of %s[%d]", kind, tp.topic,
                                tp.partition, exc_info=True)
                    continue
                if not missed:
                    continue
                async with reader.lock:
                    if not self.app.flow_control.is_active() \
                            or tp not in self.app.consumer.assignment():
                        return  # a rebalance began while the records were fetched
                    await reader.handle_missed(missed)
