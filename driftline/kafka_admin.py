"""Topic administration with confluent-kafka's AdminClient."""

from __future__ import annotations

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.config import Settings
from streams.topics import PipelineTopics


def admin(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap})


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
    """Commit the earliest offset for every partition of ``topics`` that ``group`` has no
    committed offset for yet; return how many partitions were pinned per topic.

    This is what ``auto.offset.reset=earliest`` means, made explicit, and it works around
    a faust-streaming race (its issues 216 and 596): messages fetched while tables recover
    are dropped from the in-memory queues, and "seek to committed offsets" only rewinds
    partitions that *have* a committed offset, so the others silently skip what was
    fetched (seen here: events lost after a restart, tests/integration/test_recovery.py).
    Committing fails harmlessly when the group has live members, which by then have
    committed offsets of their own.
    """
    client = admin(settings)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"driftline-admin-{group}", "enable.auto.commit": False})
    pinned: dict[str, int] = {}
    try:
        meta = client.list_topics(timeout=timeout).topics
        wanted = [TopicPartition(t, p) for t in topics if t in meta
                  for p in meta[t].partitions]
        if not wanted:
            return pinned
        request = [ConsumerGroupTopicPartitions(group, wanted)]
        result = list(client.list_consumer_group_offsets(request).values())[0].result()
        missing = []
        for tp in result.topic_partitions:
            if tp.offset < 0:
                low, _ = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                        timeout=timeout)
                missing.append(TopicPartition(tp.topic, tp.partition, low))
                pinned[tp.topic] = pinned.get(tp.topic, 0) + 1
        if missing:
            try:
                fut = client.alter_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(group, missing)])
                list(fut.values())[0].result()
            except KafkaException:
                return {}  # the group is active: its members commit their own offsets
    finally:
        consumer.close()
    return pinned
