"""Read a topic from its start to its current end, partition by partition, with
confluent-kafka. Used by the replay and by the tests; never by the services."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from driftline.adapters.config import Settings
from driftline.adapters.kafka_clients import client_config


@dataclass(frozen=True)
class TopicRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float  # seconds (the producer's create time)

    @property
    def message(self) -> TopicRecord:
        """Its coordinates, where a Faust event keeps them (a dead letter reads them so)."""
        return self


def read_topic(settings: Settings, topic: str, timeout: float = 60.0) -> Iterator[TopicRecord]:
    """Every record of ``topic`` up to the end it has now: each partition in offset order,
    partition after partition (so each key's records in the order consumers saw them)."""
    consumer = _reader(settings)
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if meta.error is not None:
            raise RuntimeError(f"topic {topic}: {meta.error}")
        deadline = time.monotonic() + timeout
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            offset = low
            while offset < high:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic} to its end in {timeout:.0f}s")
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    raise RuntimeError(f"reading {topic}[{p}]: {msg.error()}")
                offset = msg.offset() + 1
                yield _record(msg)
    finally:
        consumer.close()


def read_range(settings: Settings, topic: str, partition: int, start: int, end: int,
               timeout: float = 15.0) -> list[TopicRecord]:
    """The records of one partition with ``start <= offset < end``, or up to the
    partition's end when that comes first (blocking: run it in a thread from async code).
    Offsets without a record (transaction markers) are skipped.

    Raises :class:`TimeoutError` when no record came for ``timeout`` seconds before the
    range was read: callers apply what they read exactly once, so a silently partial read
    would lose the rest.
    """
    consumer = _reader(settings)
    out: list[TopicRecord] = []
    reached = start  # the offset after the last record read
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        while reached < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{partition}] {start}..{end - 1}: no record "
                                   f"for {timeout:.0f}s at offset {reached}")
            msg = consumer.poll(0.2)
            if msg is None:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                         timeout=timeout)
                if high <= reached:
                    break
                continue
            if msg.error():
                raise RuntimeError(f"reading {topic}[{partition}]: {msg.error()}")
            if msg.offset() >= end:
                break
            out.append(_record(msg))
            reached = msg.offset() + 1
            deadline = time.monotonic() + timeout  # a large range takes as long as it takes
    finally:
        consumer.close()
    return out


def watermarks(settings: Settings, topic: str, partition: int,
               timeout: float = 15.0) -> tuple[int, int]:
    """The oldest offset of a partition still held (retention deletes the ones before) and
    the offset its next record will have."""
    consumer = _reader(settings)
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                              timeout=timeout)
    finally:
        consumer.close()


def committed_offset(settings: Settings, group: str, topic: str, partition: int,
                     timeout: float = 15.0) -> int | None:
    """The offset consumer group ``group`` committed on a partition (the next one it will
    read), or None when it committed none. Asks without joining the group."""
    consumer = Consumer({**client_config(settings), "group.id": group,
                         "enable.auto.commit": False})
    try:
        [tp] = consumer.committed([TopicPartition(topic, partition)], timeout=timeout)
    finally:
        consumer.close()
    if tp.error is not None:
        raise RuntimeError(f"committed offset of {group} on {topic}[{partition}]: {tp.error}")
    return tp.offset if tp.offset >= 0 else None


def _reader(settings: Settings) -> Consumer:
    """A consumer of assigned partitions, in a group of its own that never commits."""
    return Consumer({**client_config(settings),
                     "group.id": f"driftline-reader-{uuid.uuid4().hex}",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest"})


def _record(msg) -> TopicRecord:
    return TopicRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                       msg.timestamp()[1] / 1000.0)
