"""The agents of one pipeline: score events, join snapshots with labels, learn.

::

    <p>.events --score--> <p>.predictions, Redis features, <p>.join (snapshot)
    <p>.labels --forward--> <p>.join (label)
    <p>.join   --join--> <p>.training      (table of pending snapshots/labels by event id)
    <p>.training --learn--> model snapshots in Redis   (one partition: one writer)
    anything malformed --> <p>.deadletter, with the reason

Every agent runs with concurrency 1: faust-streaming can commit past an in-flight
message with more (its issue 606), and at-least-once matters here.
"""

from __future__ import annotations

import functools
import heapq
import logging
import time
from typing import Any

import faust

from agents.faust_fixes import GapFiller
from driftline.config import Settings
from driftline.stores import FeatureStore, LiveModel, RedisKeys, SnapshotStore, connect
from monitoring import metrics as m
from online_models.learner import OnlineLearner
from online_models.spec import build_model, predict
from streams.declarations import PipelineSpec
from streams.engine import DuplicateEvent, FeatureEngine, LateEvent
from streams.schemas import DeadLetter, InvalidRecord, Prediction, Snapshot, TrainingExample, parse
from streams.topics import PipelineTopics

log = logging.getLogger(__name__)


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

        self.keys = RedisKeys(settings.redis_prefix, self.name)
        self.learner: OnlineLearner | None = None
        self._published_updates = 0
        self._published_at = 0.0
        self.live: LiveModel | None = None

        app.agent(self.events_topic, name=f"{self.name}-score")(self.score_events)
        app.agent(self.labels_topic, name=f"{self.name}-labels")(self.forward_labels)
        app.agent(self.join_topic, name=f"{self.name}-join")(self.join)
        app.agent(self.training_topic, name=f"{self.name}-learn")(self.learn)
        app.task(self.on_start)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.timer(settings.model_refresh_seconds)(self.refresh_model)
        app.timer(settings.snapshot_seconds)(self.publish_if_due)

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

    async def on_start(self) -> None:
        """Make sure a model exists before the first event is scored."""
        await self.snapshots.publish(build_model(self.p.model), "v0.0", only_if_absent=True)
        self.live = LiveModel(self.snapshots)
        await self.live.refresh()

    async def _on_revoked(self, sender: Any, revoked: Any, **_: Any) -> None:
        self.gaps.forget(revoked)

    async def refresh_model(self, *_: Any) -> None:
        if self.live is not None and await self.live.refresh():
            m.MODEL_SWAPS.labels(self.name, "worker").inc()

    # ---- events: validate, featurize, score, emit ------------------------------------

    async def score_events(self, stream: faust.StreamT) -> None:
        await self._consume(stream, "event", self._score_one)

    async def _score_one(self, event: faust.EventT) -> None:
        msg = event.message
        started = time.perf_counter()
        record = parse(self.p.event_type, event.value)
        entity = self.p.entity_of(record)
        prior = self.entity_state.get(entity)
        try:
            state, features = self.engine.observe(prior, record)
        except DuplicateEvent:
            # Redelivered after a crash: its effects were applied (and sent) already.
            m.DUPLICATE_EVENTS.labels(self.name).inc()
            return
        except LateEvent as exc:
            m.LATE_EVENTS.labels(self.name).inc()
            raise InvalidRecord({exc.field: f"late: {exc}"}) from None
        self.entity_state[entity] = state
        snap = self.live.current if self.live else None
        proba = predict(snap.model, self.p.task, features) if snap else 0.0
        version = snap.version if snap else "none"
        event_time = self.p.time_of(record)
        event_id = self.p.event_id_of(record)
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
        if self.learner is None:
            self.learner = await self._restore_learner()
        example = parse(TrainingExample, event.value)
        if self.learner.learn(example):
            m.LABELS_LEARNED.labels(self.name).inc()
        else:
            m.LABEL_DUPLICATES.labels(self.name).inc()
        if self.learner.updates - self._published_updates >= self.s.snapshot_every:
            await self.publish()

    async def _restore_learner(self) -> OnlineLearner:
        snap = await self.snapshots.load()
        model = snap.model if snap else build_model(self.p.model)
        revision, updates = (0, 0)
        if snap and snap.version.startswith("v"):
            rev, _, upd = snap.version[1:].partition(".")
            revision, updates = int(rev), int(upd or 0)
        self._published_updates = updates
        return OnlineLearner(self.name, self.p.task, model, revision=revision, updates=updates,
                             metric_window=self.s.metric_window)

    async def publish_if_due(self, *_: Any) -> None:
        if self.learner and self.learner.updates > self._published_updates:
            await self.publish()

    async def publish(self) -> None:
        learner = self.learner
        await self.snapshots.publish(learner.model, learner.version)
        self._published_updates = learner.updates
        self._published_at = time.time()
        stats = learner.metrics()
        for name, value in stats.items():
            m.PREQUENTIAL.labels(self.name, name).set(value)
        m.MODEL_UPDATES.labels(self.name).set(learner.updates)
        m.SNAPSHOTS.labels(self.name).inc()
        await self.redis.hset(
            self.keys.learner,
            mapping={
                "version": learner.version,
                "updates": learner.updates,
                "duplicates": learner.duplicates,
                "published_at": repr(self._published_at),
                **{k: repr(v) for k, v in stats.items()},
            },
        )

    # ---- the consuming loop and dead letters ------------------------------------------

    async def _consume(self, stream: faust.StreamT, kind: str, handle) -> None:
        """Run ``handle`` on each event; nothing that goes wrong stops the agent or is lost.

        Records Faust skipped before this one (see :class:`GapFiller`) are handled first.
        """
        async for event in stream.events():
            for missed in await self.gaps.missed_before(event):
                m.SKIPPED_RECOVERED.labels(self.name, kind).inc()
                await self._handle_one(missed, kind, handle)
            await self._handle_one(event, kind, handle)

    async def _handle_one(self, event, kind: str, handle) -> None:
        try:
            await handle(event)
        except InvalidRecord as exc:
            await self.dead_letter(event, exc, kind, "invalid")
        except Exception as exc:  # noqa: BLE001 - an outage or a bug: park, carry on
            log.exception("%s: processing failed, dead-lettering", kind)
            await self.dead_letter(
                event, InvalidRecord({"$": f"processing failed: {exc!r}"}), kind, "error")

    async def dead_letter(
        self, event: faust.EventT, exc: InvalidRecord, kind: str, cause: str
    ) -> None:
        msg, key, value = event.message, event.key, event.value
        reason = "; ".join(f"{f}: {r}" for f, r in exc.errors.items())
        letter = DeadLetter(
            source_topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            key=key.decode(errors="replace") if key else None,
            value=(value or b"").decode(errors="replace"),
            error=reason,
            fields=list(exc.errors),
            at=time.time(),
        )
        await self.deadletter_topic.send(key=key, value=letter.to_json())
        m.EVENTS.labels(self.name, kind, "deadletter").inc()
        m.DEADLETTERS.labels(self.name, f"{cause}_{kind}").inc()
        log.warning(
            "dead-lettered %s %s:%s@%s: %s", kind, msg.topic, msg.partition, msg.offset, reason
        )
