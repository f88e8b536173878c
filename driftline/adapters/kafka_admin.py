"""Topic administration with confluent-kafka's AdminClient."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.adapters.config import Settings
from driftline.adapters.kafka_clients import client_config
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics


def admin(settings: Settings) -> AdminClient:
    """One AdminClient per broker address and security settings, kept for the life of
    the process.

    Clients are cheap to keep and librdkafka logs "Purging unserved events" when one is
    destroyed with work pending; one client per process avoids both.
    """
    return _admin(tuple(sorted(client_config(settings).items())))


@functools.cache
def _admin(config: tuple[tuple[str, str], ...]) -> AdminClient:
    return AdminClient(dict(config))


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


def partition_counts(settings: Settings, timeout: float = 30.0) -> dict[str, int]:
    """Every topic on the broker, with its partition count."""
    meta = admin(settings).list_topics(timeout=timeout)
    return {name: len(topic.partitions) for name, topic in meta.topics.items()}


class TopicLayoutError(Exception):
    """Topics whose partition counts the worker cannot run with; the message says what
    to do about them."""


@dataclass(frozen=True)
class PipelinePartitions:
    """Partition counts of a pipeline's keyed topics, in two groups that follow its inputs.

    An input topic that exists keeps its count, whoever created it (a producer's first
    record makes one with the broker's ``num.partitions``); a missing one is created like
    the other input, or with ``DRIFTLINE_PARTITIONS`` when neither exists. The events and
    labels may differ: the join reads the labels and the join topic together, so the join
    topic follows the labels (where each label lands is where its snapshot is sent); the
    events feed only the scorer.

    >>> topics = PipelineTopics.for_pipeline("fraud")
    >>> parts = PipelinePartitions.follow({"fraud.events": 1}, topics, default=4)
    >>> parts
    PipelinePartitions(events=1, labels=1)
    >>> PipelinePartitions.follow({"fraud.labels": 3, "fraud.events": 1}, topics, 4).counts(
    ...     topics)["fraud.join"]
    3
    """

    events: int  # also the predictions topic and the entity states' table
    labels: int  # also the join topic and the pending joins' table

    @classmethod
    def follow(cls, existing: dict[str, int], topics: PipelineTopics,
               default: int) -> PipelinePartitions:
        events, labels = existing.get(topics.events), existing.get(topics.labels)
        return cls(events=events or labels or default, labels=labels or events or default)

    def counts(self, topics: PipelineTopics) -> dict[str, int]:
        """The partition count of each of the pipeline's topics."""
        return {**topics.partitions(self.events), topics.labels: self.labels,
                topics.join: self.labels}


def ensure_pipeline_topics(settings: Settings, pipeline: str) -> PipelineTopics:
    """Create the topics of ``pipeline`` that are missing, partitioned as its inputs are
    (:class:`PipelinePartitions`)."""
    topics = PipelineTopics.for_spec(PIPELINES[pipeline], settings.namespace)
    parts = PipelinePartitions.follow(partition_counts(settings), topics, settings.partitions)
    ensure_topics(settings, parts.counts(topics))
    return topics


def refuse_other_partitioning(settings: Settings, existing: dict[str, int],
                              needed: dict[str, tuple[int, str]]) -> None:
    """Raise :class:`TopicLayoutError` if a topic of ``needed`` (name -> its count, and the
    input it must be co-partitioned with) exists with another count.

    Faust assigns partition n of co-partitioned topics to one worker, and a table's
    partition is the partition of the record that writes it: a worker's own topic
    partitioned otherwise than its input would join labels, or keep state, where another
    worker reads. Such a topic is left over from another partitioning; only its deletion
    (or the inputs' return to its count) can mend it, and that is the operator's call.
    """
    wrong = {name: (existing[name], n, source) for name, (n, source) in needed.items()
             if name in existing and existing[name] != n}
    if not wrong:
        return
    lines = [f"  {name} has {have} partitions; it needs {n}, as {source} has"
             for name, (have, n, source) in sorted(wrong.items())]
    raise TopicLayoutError(
        "the worker's own topics were made for other partition counts than its input "
        "topics have:\n" + "\n".join(lines) + "\n"
        "They hold state kept for the old partitioning (pending joins, entity windows). "
        "Delete them (kafka-topics.sh --bootstrap-server "
        f"{settings.kafka_bootstrap} --delete --topic NAME) and the worker's local state "
        f"({settings.data_dir / 'worker' / settings.app_id}), then start again: pending "
        "joins are lost and entity windows start afresh.")


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
