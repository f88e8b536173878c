"""Exactly-once reading of the training log (``<p>.training``), for its two readers: the
learner and the embedding agent.

Each reader keeps a cursor in its own checkpoint: the offset of the next example it
needs. The log has one partition and one reader process (the worker Faust assigns the
one-partition control topic), which tails it with a consumer of its own from the learner's
cursor (:class:`TrainingTail`): no consumer group, no commits, and none of Faust's
per-record stream machinery, which cost more than learning the example. A record
before a reader's cursor is in its checkpoint already (skipped); a gap after it (the
embedding agent resuming from an older checkpoint) is fetched from Kafka and applied
first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from cachetools import LRUCache
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from agents.consume import DeadLetters
from agents.faust_fixes import RecoveredEvent, RecoveredMessage
from driftline.adapters.config import Settings
from driftline.adapters.kafka_clients import client_config
from driftline.adapters.topic_reader import read_range, watermarks
from monitoring import metrics
from streams.schemas import InvalidRecord, TrainingExample, parse

log = logging.getLogger(__name__)


class UnreadTraining(RuntimeError):
    """Training examples that exist could not be read (Kafka slow or unreachable)."""


class Cursor(Protocol):
    next_offset: int | None


class TrainingLog:
    """The one-partition training topic, as a reader with a :class:`Cursor` sees it."""

    GAP_CHUNK = 5000  # records fetched at a time when closing a gap

    def __init__(self, settings: Settings, pipeline: str, topic: str,
                 deadletters: DeadLetters) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.topic = topic
        self.deadletters = deadletters
        # offset -> (value, example or the InvalidRecord it raised): both readers apply
        # the same records one after the other, and parse each once.
        self._parsed: LRUCache = LRUCache(maxsize=self.GAP_CHUNK)

    def example(self, value: bytes, offset: int) -> TrainingExample:
        """The example in the training record at ``offset``; raises :class:`InvalidRecord`."""
        hit = self._parsed.get(offset)
        if hit is None or hit[0] != value:
            try:
                hit = (value, parse(TrainingExample, value))
            except InvalidRecord as exc:
                hit = (value, exc)
            self._parsed[offset] = hit
        if isinstance(hit[1], InvalidRecord):
            raise hit[1]
        return hit[1]

    async def apply_in_order(self, cursor: Cursor, record: Any,
                             apply: Callable[[bytes, int], None], reader: str) -> None:
        """Apply a training record to ``cursor`` (``apply`` moves its ``next_offset`` on)
        exactly once, in offset order, fetching first what Faust committed past."""
        offset = record.message.offset
        if cursor.next_offset is None:
            cursor.next_offset = offset
        if offset < cursor.next_offset:
            metrics.LABELS_REPLAYED.labels(pipeline=self.pipeline, reader=reader,
                                           action="skipped").inc()
            return
        await self.apply_until(cursor, offset, apply, reader)
        apply(record.value, offset)

    async def apply_until(self, cursor: Cursor, end: int,
                          apply: Callable[[bytes, int], None], reader: str) -> None:
        """Apply the records from ``cursor.next_offset`` up to ``end`` (exclusive), read
        from the log; an invalid one is dead-lettered. Raises :class:`UnreadTraining`."""
        while end > cursor.next_offset:
            chunk_end = min(end, cursor.next_offset + self.GAP_CHUNK)
            for rec in await self.fetch(cursor, chunk_end, reader):
                try:
                    apply(rec.value, rec.offset)
                except InvalidRecord as exc:
                    self.deadletters.send(rec, exc, "training")

    async def fetch(self, cursor: Cursor, end: int, reader: str) -> list:
        """The training records from ``cursor.next_offset`` up to ``end`` (exclusive).

        Records that retention deleted are lost: they are counted
        (``driftline_labels_replayed_total{action="lost"}``) and the cursor moves past them.
        A failed or partial read raises :class:`UnreadTraining`: the caller retries rather
        than skip examples.
        """
        start = cursor.next_offset
        try:
            records = await asyncio.to_thread(read_range, self.settings, self.topic, 0, start,
                                              end)
            low = None
            if not records or records[0].offset > start:
                low, _ = await asyncio.to_thread(watermarks, self.settings, self.topic, 0)
        except Exception as exc:  # noqa: BLE001 - whatever Kafka raised, the caller retries
            raise UnreadTraining(f"could not read training examples {start}..{end - 1}: "
                                 f"{exc!r}") from exc
        if low is not None and low > start:
            lost = min(low, end) - start
            log.error("%s: %d training examples (offsets %d..%d) were deleted by retention "
                      "before the %s reader applied them", self.pipeline, lost, start,
                      start + lost - 1, reader)
            metrics.LABELS_REPLAYED.labels(pipeline=self.pipeline, reader=reader,
                                           action="lost").inc(lost)
            cursor.next_offset = start + lost
        if records and records[-1].offset >= end - 1:
            metrics.LABELS_REPLAYED.labels(pipeline=self.pipeline, reader=reader,
                                           action="fetched").inc(len(records))
            return records
        if cursor.next_offset >= end:
            return []  # all of it deleted by retention
        raise UnreadTraining(f"fetched training examples {start}..{end - 1} only partially")


class TrainingTail:
    """Tails the training log from the learner's cursor and hands each batch to
    ``handle``, until :meth:`stop`. Started when this worker is given the control topic
    (so one worker at a time), stopped when it loses it."""

    def __init__(self, settings: Settings, topic: str,
                 start: Callable[[], Awaitable[int | None]],
                 handle: Callable[[Sequence[Any]], Awaitable[None]]) -> None:
        self.settings = settings
        self.topic = topic
        self.start = start      # the learner's next offset (None: from the log's start)
        self.handle = handle
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    def _next(self, consumer: Consumer) -> list:
        """What has arrived, up to a batch: the first record waited for (a while), the
        rest taken as they are (``consume`` with a timeout would wait to fill the batch,
        a label's latency at a low rate)."""
        first = consumer.poll(self.settings.worker_batch_seconds)
        if first is None:
            return []
        return [first, *consumer.consume(self.settings.worker_batch - 1, 0)]

    async def run(self) -> None:
        consumer = Consumer({
            **client_config(self.settings),
            # Required by the client, never used: partitions are assigned, not subscribed,
            # and nothing is committed (the cursor lives in the learner's checkpoint).
            "group.id": f"{self.settings.app_id}-training-tail",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        })
        # A thread of its own for the blocking polls: the loop's default executor serves
        # the outputs' flushes, which must never wait behind a tail.
        thread = ThreadPoolExecutor(1, thread_name_prefix=f"tail-{self.topic}")
        loop = asyncio.get_running_loop()
        try:
            offset = await self.start()
            consumer.assign([TopicPartition(self.topic, 0,
                                            OFFSET_BEGINNING if offset is None else offset)])
            log.info("%s: tailing from offset %s", self.topic,
                     "the start" if offset is None else offset)
            while not self._stopping:
                messages = await loop.run_in_executor(thread, self._next, consumer)
                records = []
                for msg in messages:
                    if msg.error():
                        log.warning("%s: %s", self.topic, msg.error())  # the client retries
                        continue
                    records.append(RecoveredEvent(msg.key(), msg.value(), RecoveredMessage(
                        msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1] / 1000)))
                if records and not self._stopping:
                    await self.handle(records)
        finally:
            await loop.run_in_executor(thread, consumer.close)
            thread.shutdown(wait=False)
