"""The worker killed mid-stream (kill -9) and restarted neither loses nor double-applies a
label, in the model or in Milvus: the learner's and the embedding agent's checkpoints hold
the training-topic offset they reflect."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
import redis

from driftline.adapters.kafka_admin import ensure_pipeline_topics
from driftline.adapters.signing import load_signed, model_key
from driftline.adapters.stores import RedisKeys
from driftline.adapters.topic_reader import watermarks
from driftline.adapters.vectors import collection_names
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import worker_process
from monitoring.scrape import scrape
from streams.catalog.fraud import FRAUD
from streams.generators.fraud import FraudGenerator, FraudStreamConfig
from streams.topics import PipelineTopics
from tests.integration.conftest import free_port, learner_state, milvus_rows, send, wait_for

pytestmark = pytest.mark.integration

N = 3000


@pytest.fixture
def own_settings(settings):
    with scratch_namespace(settings, f"{settings.namespace}-learner",
                           worker_port=free_port(), snapshot_every=100,
                           vector_batch=1000, vector_flush_seconds=5.0) as s:
        ensure_pipeline_topics(s, "fraud")
        yield s


def served_model(s):
    client = redis.Redis.from_url(s.redis_url)
    try:
        blob = client.hget(RedisKeys(s.redis_prefix, "fraud").model, "blob")
        return load_signed(blob, model_key(s))
    finally:
        client.close()


def progress(s, topics: PipelineTopics, metrics_url: str) -> str:
    """Where the labels stopped: each topic's record count and the worker's counts."""
    counts = topics.partitions(s.partitions)
    ends = {t: sum(watermarks(s, t, p)[1] for p in range(counts[t]))
            for t in (topics.events, topics.labels, topics.training)}
    m = scrape(metrics_url)
    seen = [f"{k}{labels}={v}" for k, samples in sorted(m.items())
            if any(w in k for w in ("training", "join", "skipped", "replayed", "labels",
                                    "deadletter", "events_total"))
            for labels, v in samples if labels.get("pipeline") == "fraud"]
    return f"records per topic {ends}; worker: " + "; ".join(seen)


def test_a_killed_worker_learns_and_embeds_every_label_exactly_once(own_settings, logs):
    s = own_settings
    topics = PipelineTopics.for_spec(FRAUD, s.namespace)
    run_id = uuid.uuid4().hex[:8]
    # Labels 5 s of event time after their event: they flow while the events do.
    config = FraudStreamConfig(events=N, cards=300, seed=21, run_id=run_id, card_prefix=run_id,
                               label_delay=5.0, start_time=time.time() - N / 2.0)
    emissions = list(FraudGenerator(config).emissions())
    labels = [e for e in emissions if e.kind == "label"]
    assert len(labels) == N

    first = worker_process(s, logs / "learner").start()
    send(s, topics.events, [(e.key, e.record.to_json()) for e in emissions if e.kind == "event"])
    send(s, topics.labels, [(e.key, e.record.to_json()) for e in labels])
    learned_url = f"http://127.0.0.1:{s.worker_port}/metrics"
    # Killed as soon as the first vectors are written (the warm-up's 1,000, at once): the
    # next batch needs 1,000 more labels applied, so the embedding agent is part-way.
    # (Waiting for the learner's progress first once let the agent finish.)
    wait_for(lambda: scrape(learned_url).value("driftline_vectors_written_total",
                                               pipeline="fraud", kind="events") > 0,
             180, "the first vectors written", interval=0.1)
    written = scrape(learned_url).value("driftline_vectors_written_total", pipeline="fraud",
                                        kind="events")
    first.kill()  # between two checkpoints, with Faust's commits anywhere
    assert 0 < written < N

    second = worker_process(s, logs / "learner").start()
    try:
        def updates() -> int:
            return int(learner_state(s).get("updates", 0))

        try:
            wait_for(lambda: updates() >= N, 180, f"{N} labels learned")
        except AssertionError:
            raise AssertionError(f"{updates()} of {N} labels learned; "
                                 + progress(s, topics, learned_url)) from None
        events_c, entities_c = collection_names(s, "fraud")
        try:
            wait_for(lambda: len(milvus_rows(s, events_c, 'id != ""', ["id"])) >= N, 120,
                     f"{N} event vectors")
        except AssertionError:
            m = scrape(learned_url)
            found = len(milvus_rows(s, events_c, 'id != ""', ["id"]))
            raise AssertionError(
                f"{found} vectors; worker: " + "; ".join(
                    f"{k}{labels}={v}" for k, samples in sorted(m.items())
                    if "vector" in k or "replayed" in k for labels, v in samples
                    if labels.get("pipeline") == "fraud")) from None
        time.sleep(3 * max(s.snapshot_seconds, s.vector_flush_seconds) + 2)  # twice would show
        state = learner_state(s)
        vectors = milvus_rows(s, events_c, 'id != ""', ["id"])
        profiles = milvus_rows(s, entities_c, 'id != ""', ["id", "events"])
    finally:
        second.stop()
    assert int(state["updates"]) == N
    # The model itself saw each label once: its scaler counts every example it learned.
    assert served_model(s)["StandardScaler"].counts["amount"] == N
    # Each labeled event is one vector, and each card's profile counts its events once.
    assert sorted(r["id"] for r in vectors) == sorted(e.record.event_id for e in labels)
    per_card = Counter(e.key for e in emissions if e.kind == "event")
    assert {p["id"]: p["events"] for p in profiles} == dict(per_card)
