"""Topic administration with confluent-kafka's AdminClient."""

from __future__ import annotations

import functools

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.config import Settings
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics


def admin(settings: Settings) -> AdminClient:
    """One AdminClient per broker address, kept for the life of the process.

    Clients are cheap to keep and librdkafka logs "Purging unserved events" when one is
    destroyed with work pending; one client per process avoids both.
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
