"""The worker's outputs to Kafka: one confluent-kafka producer, flushed per batch.

Agents write predictions, join records, training examples, dead letters and control
events through :class:`Outputs`. A batch is acknowledged to Faust (so its offsets can be
committed) only after :meth:`Outputs.flush` has seen every record it produced delivered:
a crash before that redelivers the batch, which sends its records again (at least once;
the join and the learner recognise a record seen before by its event id).

Why not Faust's own ``topic.send``: each one costs tens of microseconds of Python
(futures, aiokafka's accumulator) where librdkafka's ``produce`` costs one or two, and a
labeled event sends three records. Table changelogs still go through Faust's producer,
which its commit flushes (:func:`agents.faust_fixes.flush_waits_for_delivery`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import zlib
from typing import Any, Literal

from aiokafka.partitioner import murmur2
from confluent_kafka import KafkaException, Producer

from driftline.adapters.config import Settings
from driftline.adapters.kafka_clients import client_config

log = logging.getLogger(__name__)

Partitioner = Literal["crc32", "murmur2"]


def partition_for(key: bytes, partitions: int, partitioner: Partitioner) -> int:
    """The partition a Kafka client's default partitioner gives ``key``: ``crc32`` is
    librdkafka's (confluent-kafka's and kcat's), ``murmur2`` the Java client's (and
    aiokafka's, Faust's).

    >>> partition_for(b"ev-1", 4, "crc32"), partition_for(b"ev-1", 4, "murmur2")
    (2, 3)
    """
    if partitioner == "crc32":
        return zlib.crc32(key) % partitions
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Outputs:
    """Produce now, :meth:`flush` before acknowledging what the records came from."""

    RETRY_SECONDS = 5.0  # the longest wait between two attempts at a failed delivery

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer({
            **client_config(settings),
            "enable.idempotence": True,   # a retried send is written once
            "linger.ms": 5,
            "compression.type": "lz4",
            "client.id": f"{settings.app_id}-outputs",
        })
        self._lock = threading.Lock()
        self._failed: list[tuple[str, bytes | None, bytes | None, int]] = []

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             partition: int = -1) -> None:
        """Queue a record (``partition`` -1: the default partitioner's choice; ``value``
        None: a tombstone)."""
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, partition=partition,
                                       on_delivery=self._delivered)
                return
            except BufferError:  # the local queue is full: let deliveries make room
                self._producer.poll(0.05)

    def _delivered(self, err: Any, msg: Any) -> None:
        """librdkafka's report on one record (in the thread that serves reports)."""
        if err is not None:
            with self._lock:
                self._failed.append((msg.topic(), msg.key(), msg.value(), msg.partition()))

    async def flush(self) -> None:
        """Wait until every record sent so far is delivered; a record Kafka refused
        (after librdkafka's own retries: a broker down for minutes) is sent again,
        with a growing pause, until it is delivered. Never drops a record."""
        delay = 0.5
        while True:
            remaining = await asyncio.to_thread(self._producer.flush, 30.0)
            with self._lock:
                failed, self._failed = self._failed, []
            if remaining == 0 and not failed:
                return
            log.warning("%d record(s) not yet delivered and %d refused by Kafka; "
                        "retrying in %.1fs", remaining, len(failed), delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, self.RETRY_SECONDS)
            for topic, key, value, partition in failed:
                self.send(topic, key, value, partition)

    def close(self) -> None:
        try:
            self._producer.flush(10.0)
        except KafkaException:  # noqa: BLE001 - shutting down: what is undelivered is redone
            log.warning("outputs not flushed at shutdown", exc_info=True)
