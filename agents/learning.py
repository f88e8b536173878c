"""The learner: the one writer of a pipeline's model, fed by the one-partition training log.

::

    <p>.training --learn--> the served model (Redis, every N labels or T seconds: a few KB)
                            the learner's checkpoint (Redis, every T seconds: up to a MB)
                            drift detections --> <p>.control

Each example is applied once, in the order of the log, across crashes: the checkpoint
holds the offset of the next example (:mod:`agents.training_log`). The served model is
light and published often, so that scorers serve what the learner knows within about a
second; the checkpoint, heavy with the drift monitors' windows, is written on its own
cadence, and a crash costs re-learning from the log what came after it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any

from agents.consume import DeadLetters
from agents.faust_fixes import retried
from agents.outputs import Outputs
from agents.training_log import TrainingLog, UnreadTraining
from driftline.adapters.config import Settings
from driftline.adapters.stores import ModelSnapshot, RedisKeys, SnapshotStore
from driftline.errors import BlobRefused
from monitoring import metrics
from online_models.learner import OnlineLearner
from online_models.spec import build_model
from streams.declarations import PipelineSpec
from streams.schemas import ControlEvent, InvalidRecord
from streams.topics import PipelineTopics

log = logging.getLogger(__name__)


class Learning:
    """Handles batches of the training topic: learns, publishes, checkpoints."""

    STATUS_SECONDS = 1.0  # the prequential metrics and drift statistics, at most this often

    def __init__(self, settings: Settings, spec: PipelineSpec, topics: PipelineTopics,
                 redis: Any, snapshots: SnapshotStore, training_log: TrainingLog,
                 outputs: Outputs, deadletters: DeadLetters) -> None:
        self.settings = settings
        self.spec = spec
        self.name = spec.name
        self.topics = topics
        self.redis = redis
        self.keys = RedisKeys(settings.redis_prefix, spec.name)
        self.snapshots = snapshots
        self.training_log = training_log
        self.outputs = outputs
        self.deadletters = deadletters
        self.learner: OnlineLearner | None = None
        # Learning, publishing and a model swap never interleave.
        self.lock = asyncio.Lock()
        self._published_updates = 0
        self._published_at = 0.0
        self._status_at = 0.0
        self._status_updates = -1
        self._checkpointed_updates = 0
        # When the oldest example learned since the last publication became one (the
        # Kafka time of its training record): the served model's label-to-serving clock.
        self._oldest_unpublished: float | None = None
        # Called with each snapshot published (a copy), e.g. by this worker's scorer.
        self.on_published: Callable[[ModelSnapshot], None] | None = None
        # The features of the last examples learned: a model that scores one of them
        # non-finite is neither published nor checkpointed.
        self._recent_rows: collections.deque[dict] = collections.deque(maxlen=8)
        # After a rollback, examples up to this offset are learned one careful step at a
        # time, so that the one that poisoned the model is found and refused.
        self._careful_until = -1
        self._learned = metrics.LABELS_LEARNED.labels(pipeline=spec.name)
        self._duplicates = metrics.LABEL_DUPLICATES.labels(pipeline=spec.name)

    async def handle(self, records: Sequence[Any]) -> None:
        async with self.lock:
            learner = await self.restore()
            for rec in records:
                try:
                    if rec.message.offset == learner.next_offset:  # the usual case: in order
                        self._apply(learner, rec.value, rec.message.offset)
                    else:
                        # Dead-lettering this example would leave the unread ones before it
                        # to the next example, which at the end of the stream never comes.
                        await retried(lambda rec=rec: self.training_log.apply_in_order(
                            learner, rec, lambda value, offset: self._apply(learner, value,
                                                                            offset),
                            reader="learn"), UnreadTraining, f"{self.name}: learning")
                except InvalidRecord as exc:
                    self.deadletters.send(rec, exc, "training")
                at = rec.message.timestamp
                if self._oldest_unpublished is None or at < self._oldest_unpublished:
                    self._oldest_unpublished = at
            self._report_drift(learner)
            if learner.updates - self._published_updates >= self.settings.snapshot_every:
                await self.publish()

    def _apply(self, learner: OnlineLearner, value: bytes, offset: int) -> None:
        # The offset moves on even for an invalid example: it is dead-lettered, not retried.
        learner.next_offset = offset + 1
        example = self.training_log.example(value, offset)
        if learner.learn(example, update_model=offset > learner.learned_through,
                         careful=offset <= self._careful_until):
            self._recent_rows.append(example.features)
            self._learned.inc()
        else:
            self._duplicates.inc()

    async def restore(self) -> OnlineLearner:
        """The learner, restored from its checkpoint on first use. Callers hold the lock."""
        if self.learner is None:
            learner = None
            try:
                learner = await self.snapshots.load_checkpoint()
            except (BlobRefused, pickle.UnpicklingError, AttributeError, ImportError,
                    TypeError):
                # Written by an incompatible version, or refused: unsigned, altered, or
                # naming a class a learner does not need (counted and logged by the store).
                # (A Redis error propagates: the batch is retried from the checkpoint's
                # offset once Redis answers.)
                log.exception("%s: unreadable learner checkpoint, starting from the snapshot",
                              self.name)
            if learner is None:
                # No checkpoint: a new model from the log's first example. (Not the served
                # model: it may have learned examples since published, which the log
                # would teach it a second time.)
                learner = OnlineLearner(self.spec, build_model(self.spec.model),
                                        metric_window=self.settings.metric_window)
            learner.add_fallback(self.spec)
            self.learner = learner
            self._published_updates = self._checkpointed_updates = learner.updates
            log.info("%s: learner at %s, next training offset %s", self.name, learner.version,
                     learner.next_offset)
        return self.learner

    def forget(self) -> None:
        """Another worker learns now (the training partition was revoked); should it come
        back, resume from the checkpoint, not from a learner stopped somewhere between."""
        self.learner = None
        self._oldest_unpublished = None

    def _report_drift(self, learner: OnlineLearner) -> None:
        for detection in learner.pop_detections():
            metrics.DRIFT_DETECTIONS.labels(pipeline=self.name, kind=detection.kind).inc()
            log.warning("%s: %s drift detected by %s at %s: %s", self.name, detection.kind,
                        detection.detector, learner.version, detection.evidence,
                        extra={"model_version": learner.version, "drift": detection.kind})
            self.send_control(ControlEvent(
                kind=f"{detection.kind}_drift", pipeline=self.name, at=time.time(),
                model_version=learner.version, offset=learner.next_offset - 1,
                reason=detection.detector,
                evidence={"seen": detection.seen, **detection.evidence}))

    def send_control(self, event: ControlEvent) -> None:
        self.outputs.send(self.topics.control, self.name.encode(), event.to_json())

    # ---- publishing ------------------------------------------------------------------

    async def publish_if_due(self, *_: Any) -> None:
        # Under the lock: two publications in flight at once could land in Redis in the
        # wrong order and serve an older snapshot after a newer one.
        async with self.lock:
            if self.learner is None:
                return
            if self.learner.updates > self._published_updates:
                await self.publish()
            elif self.learner.updates != self._status_updates:
                await self._write_status(force=True)

    async def publish(self) -> None:
        """Publish the model (and its fallback) to the scorers, if it is healthy. Callers
        hold the lock."""
        if not await self._healthy(self.learner):
            return
        learner = self.learner
        await self.snapshots.publish(learner.model, learner.version, fallback=learner.fallback,
                                     fallback_examples=learner.fallback_examples,
                                     oldest_label_at=self._oldest_unpublished)
        self._oldest_unpublished = None
        self._published_updates = learner.updates
        self._published_at = time.time()
        metrics.SNAPSHOTS.labels(pipeline=self.name).inc()
        if self.on_published is not None:  # this process's scorer serves it at once
            self.on_published(self.snapshots.last_published())
        await self._write_status()

    async def _write_status(self, force: bool = False) -> None:
        """The learner's counters for ``GET /v1/models`` (its prequential metrics and drift
        statistics at most every :attr:`STATUS_SECONDS`: they cost milliseconds)."""
        learner = self.learner
        status: dict[str, Any] = {
            "version": learner.version,
            "revision": learner.revision,
            "updates": learner.updates,
            "duplicates": learner.duplicates,
            # Not known before the learner's first example: "" then.
            "next_offset": "" if learner.next_offset is None else learner.next_offset,
            "published_at": repr(self._published_at),
        }
        now = time.monotonic()
        if force or now - self._status_at >= self.STATUS_SECONDS:
            self._status_at = now
            self._status_updates = learner.updates
            status.update(self._statistics(learner))
        await self.redis.hset(self.keys.learner, mapping=status)

    def _statistics(self, learner: OnlineLearner) -> dict[str, str]:
        by_version = learner.metrics_by_version()
        for revision, stats in by_version.items():
            for name, value in stats.items():
                metrics.PREQUENTIAL_BY_VERSION.labels(
                    pipeline=self.name, model_version=revision, metric=name).set(value)
        current = by_version.get(f"v{learner.revision}", {})
        for name in self.spec.metrics:
            if name in current:
                metrics.PREQUENTIAL.labels(pipeline=self.name, metric=name).set(current[name])
        drift_stats = learner.feature_drift.last_statistics()
        for feature, stats in drift_stats.items():
            for stat, value in stats.items():
                metrics.FEATURE_DRIFT.labels(pipeline=self.name, feature=feature,
                                             statistic=stat).set(value)
        metrics.MODEL_UPDATES.labels(pipeline=self.name).set(learner.updates)
        metrics.MODEL_REVISION.labels(pipeline=self.name).set(learner.revision)
        return {"metrics": json.dumps(by_version), "feature_drift": json.dumps(drift_stats)}

    # ---- checkpoints -----------------------------------------------------------------

    async def checkpoint_if_due(self, *_: Any) -> None:
        async with self.lock:
            if self.learner is not None and self.learner.updates > self._checkpointed_updates:
                await self.checkpoint()

    async def checkpoint(self) -> None:
        """Write the learner's checkpoint. Callers hold the lock."""
        if self.learner is None or not await self._healthy(self.learner):
            return
        learner = self.learner
        await self.snapshots.save_checkpoint(learner, learner.version)
        self._checkpointed_updates = learner.updates

    # ---- health ----------------------------------------------------------------------

    async def _healthy(self, learner: OnlineLearner) -> bool:
        """Whether ``learner``'s model scores the last examples finite. If not (an input
        the guards upstream let through poisoned it), it is dropped for the last
        checkpoint (healthy when written), which learns again what came after it, one
        careful step at a time, refusing the example that poisons it; the scorers keep
        the last healthy model meanwhile. Whether the learner is healthy now."""
        if learner.healthy(self._recent_rows):
            return True
        metrics.MODEL_UNHEALTHY.labels(pipeline=self.name).inc()
        log.error("%s: the model at %s scores non-finite; not published, back to the "
                  "checkpoint", self.name, learner.version)
        self.send_control(ControlEvent(
            kind="model_unhealthy", pipeline=self.name, at=time.time(),
            model_version=learner.version, offset=learner.next_offset - 1,
            reason="non-finite scores"))
        end = learner.next_offset
        self._careful_until = max(self._careful_until, end - 1)
        self._recent_rows.clear()
        self.forget()
        learner = await self.restore()
        if learner.next_offset is None:
            learner.next_offset = 0  # no checkpoint yet: the log from its start
        await retried(lambda: self.training_log.apply_until(
            learner, end, lambda value, offset: self._apply(learner, value, offset),
            reader="learn"), UnreadTraining, f"{self.name}: learning again after a rollback")
        if learner.healthy(self._recent_rows):
            return True
        self.forget()  # not expected: the careful steps keep it finite
        return False
