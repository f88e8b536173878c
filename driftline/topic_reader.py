"""Read a topic from its start to its current end, partition by partition, with
confluent-kafka. Used by the replay and by the tests; never by the services."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from driftline.config import Settings


@dataclass(frozen=True)
class TopicRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def read_topic(settings: Settings, topic: str, timeout: float = 60.0) -> Iterator[TopicRecord]:
    """Every record of ``topic`` up to the end it has now: each partition in offset order,
    partition after partition (so each key's records in the order consumers saw them)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"driftline-reader-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
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
                yield TopicRecord(p, msg.offset(), msg.key(), msg.value())
    finally:
        consumer.close()
