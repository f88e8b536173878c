"""Input topics the worker did not create: it follows their partition counts, or refuses to
start, saying what to do; a valid event is never dead-lettered for the topics' layout."""

from __future__ import annotations

import time
import uuid

import pytest

from driftline.adapters.kafka_admin import admin, ensure_topics
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import worker_process
from monitoring.scrape import scrape
from streams.catalog.fraud import FRAUD
from streams.generators.fraud import FraudGenerator, FraudStreamConfig
from streams.topics import PipelineTopics
from tests.integration.conftest import read_all, send, wait_for

pytestmark = pytest.mark.integration

N_EVENTS = 300


@pytest.fixture
def scratch(settings):
    """A namespace of the test's own, with no topics yet."""
    with scratch_namespace(settings, f"{settings.namespace}-p{uuid.uuid4().hex[:6]}",
                           worker_port=free_port(), api_port=free_port()) as s:
        yield s


def partitions(settings, topic: str) -> int:
    return len(admin(settings).list_topics(topic, timeout=30).topics[topic].partitions)


def produce(settings, topics: PipelineTopics) -> tuple[set[str], set[str]]:
    """A fraud stream of an hour ago and its labels; the event ids of each."""
    run_id = uuid.uuid4().hex[:8]
    emissions = list(FraudGenerator(FraudStreamConfig(
        events=N_EVENTS, seed=5, run_id=run_id, card_prefix=f"card-{run_id}",
        start_time=time.time() - 3600)).emissions())
    events = [e for e in emissions if e.kind == "event"]
    labels = [e for e in emissions if e.kind == "label"]
    send(settings, topics.events, [(e.key, e.record.to_json()) for e in events])
    send(settings, topics.labels, [(e.key, e.record.to_json()) for e in labels])
    return {e.record.event_id for e in events}, {e.record.event_id for e in labels}


def assert_all_scored_and_joined(settings, topics, tmp_path, events, labels) -> None:
    """Every event scored and none dead-lettered, every label joined where it landed (the
    join topic partitioned as the labels are), each table's changelog partitioned as the
    input that writes it."""
    worker = worker_process(settings, tmp_path, ["fraud"]).start()
    try:
        wait_for(lambda: {p["event_id"] for p in read_all(settings, topics.predictions)}
                 >= events, 120, "every event scored")
        wait_for(lambda: {t["event_id"] for t in read_all(settings, topics.training)}
                 >= labels, 120, "every label joined")
        forwarded = scrape(f"http://127.0.0.1:{settings.worker_port}/metrics").value(
            "driftline_labels_forwarded_total", pipeline="fraud")
    finally:
        worker.stop()
    assert read_all(settings, topics.deadletter) == []
    assert forwarded == 0
    changelog = f"{settings.app_id}-fraud-%s-changelog"
    assert partitions(settings, topics.join) == partitions(settings, topics.labels)
    assert partitions(settings, changelog % "pending-join") == partitions(settings, topics.labels)
    assert partitions(settings, changelog % "entity-state") == partitions(settings, topics.events)


def test_topics_a_producer_created_first_are_followed(scratch, tmp_path):
    topics = PipelineTopics.for_spec(FRAUD, scratch.namespace)
    events, labels = produce(scratch, topics)  # the broker creates both, with 1 partition
    assert partitions(scratch, topics.events) == 1 != scratch.partitions
    assert_all_scored_and_joined(scratch, topics, tmp_path, events, labels)


def test_events_and_labels_keep_counts_of_their_own(scratch, tmp_path):
    topics = PipelineTopics.for_spec(FRAUD, scratch.namespace)
    ensure_topics(scratch, {topics.events: 1, topics.labels: 3})
    events, labels = produce(scratch, topics)
    assert_all_scored_and_joined(scratch, topics, tmp_path, events, labels)
    assert (partitions(scratch, topics.events), partitions(scratch, topics.labels)) == (1, 3)


def test_topics_left_for_other_counts_stop_the_worker_with_what_to_do(scratch, tmp_path):
    """A worker of another layout left its join topic and a table's changelog (4
    partitions) behind; the inputs have 1."""
    topics = PipelineTopics.for_spec(FRAUD, scratch.namespace)
    changelog = f"{scratch.app_id}-fraud-entity-state-changelog"
    ensure_topics(scratch, {topics.events: 1, topics.labels: 1, topics.join: 4, changelog: 4})
    with pytest.raises(RuntimeError, match="worker exited"):
        worker_process(scratch, tmp_path, ["fraud"]).start(timeout=60)
    log = (tmp_path / "worker.log").read_text()
    assert f"{topics.join} has 4 partitions" in log
    assert f"{changelog} has 4 partitions" in log
    assert "delete" in log.lower()
