"""Topic administration with confluent-kafka's AdminClient."""

from __future__ import annotations

import functools
import logging

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.config import Settings
from streams.topics import PipelineTopics

log = logging.getLogger(__name__)


def admin(settings: Settings) -> AdminClient:
    """One AdminClient per broker address, kept for the life of the process.

    Destroying an AdminClient while librdkafka still holds an event for it ("Purging 1
    unserved events from background queue") crashed the worker with SIGSEGV on a fresh
    broker (seen here, intermittently); a client that is never destroyed cannot.
    """
    return _admin(settings.kafka_bootstrap)


@functools.cache
def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def ensure_topics(settings: Settings, topics: dict[str, int], timeout: float = 30.0) -> list[str]:
    """Create each missing topic with its partition count; return the ones created.

    An existing topic is left as it is (its partition count is not changed).
    """
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    missing = [NewTopic(name, num_partitions=n, replication_factor=1)
               for name, n in topics.items() if name not in existing]
    created = []
    for name, fut in (client.create_topics(missing, request_timeout=timeout).items()
                      if missing else []):
        try:
            fut.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return created


def ensure_pipeline_topics(settings: Settings, pipeline: str) -> PipelineTopics:
    from streams.pipelines import PIPELINES

    topics = PipelineTopics.for_spec(PIPELINES[pipeline], settings.namespace)
    ensure_topics(settings, topics.partitions(settings.partitions))
    return topics


def delete_namespace_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Delete every topic of ``settings.namespace`` (ours and Faust's changelogs).

    Refuses the empty namespace: it would match every topic on the broker.
    """
    if not settings.namespace:
        raise ValueError("refusing to delete topics without a namespace")
    client = admin(settings)
    names = [t for t in client.list_topics(timeout=timeout).topics
             if t.startswith(settings.namespace + ".")]
    for fut in (client.delete_topics(names, operation_timeout=timeout).values() if names else []):
        fut.result(timeout)
    return names


def pin_start_offsets(settings: Settings, group: str, topics: list[str],
                      timeout: float = 30.0) -> dict[str, int]:
    """Commit offset 0 for every partition of ``topics`` that ``group`` has no committed
    offset for yet; return how many partitions were pinned per topic. Best effort.

    Offset 0 means what ``auto.offset.reset=earliest`` means (where retention removed it,
    the consumer resets to the earliest offset left), made explicit: faust-streaming's
    "seek to committed offsets" after table recovery only rewinds partitions that have a
    committed offset (see :class:`agents.faust_fixes.GapFiller` for the rest). Committing
    fails harmlessly when the group has live members, which commit their own offsets.
    """
    client = admin(settings)
    pinned: dict[str, int] = {}
    try:
        meta = client.list_topics(timeout=timeout).topics
        wanted = [TopicPartition(t, p) for t in topics if t in meta
                  for p in meta[t].partitions]
        if not wanted:
            return pinned
        request = [ConsumerGroupTopicPartitions(group, wanted)]
        result = list(client.list_consumer_group_offsets(request).values())[0].result()
        missing = [TopicPartition(tp.topic, tp.partition, 0)
                   for tp in result.topic_partitions if tp.offset < 0]
        if missing:
            fut = client.alter_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, missing)])
            list(fut.values())[0].result()
            for tp in missing:
                pinned[tp.topic] = pinned.get(tp.topic, 0) + 1
    except KafkaException as exc:
        log.info("start offsets of %s not pinned: %s", group, exc)
        return {}
    return pinned
