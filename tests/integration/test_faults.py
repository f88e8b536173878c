"""Faults with accounting: while events and labels flow, a store stops and comes back;
every event is scored once, every label learned once, and nothing is dead-lettered (a
transient fault is retried, never parked).

The worker runs in a namespace of this module's own; the fault is real (the stack's
Redis is stopped and started again), so the session's other processes ride it out too.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
import time

import pytest

from driftline.stack import LocalStack
from streams.generators import pipeline_history
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics
from tests.integration.conftest import learner_state, own_namespace, read_all, send, wait_for

pytestmark = pytest.mark.integration

settings, logs, worker, api, worker_metrics = own_namespace("faults", ["fraud"])

N = 3000
CHUNKS = 10  # sent a second apart: the fault lands mid-stream


def _produce_paced(s, topics: PipelineTopics, emissions: list) -> threading.Thread:
    def run() -> None:
        size = -(-len(emissions) // CHUNKS)
        for i in range(0, len(emissions), size):
            chunk = emissions[i:i + size]
            send(s, topics.events, [(e.key, e.record.to_json()) for e in chunk
                                    if e.kind == "event"])
            send(s, topics.labels, [(e.key, e.record.to_json()) for e in chunk
                                    if e.kind == "label"])
            time.sleep(1.0)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _account(s, topics: PipelineTopics, event_ids: set[str]) -> dict[str, int]:
    predicted = [p["event_id"] for p in read_all(s, topics.predictions)]
    trained = [t["event_id"] for t in read_all(s, topics.training)]
    letters = read_all(s, topics.deadletter)
    if letters:
        reasons = Counter(f'{d["source_topic"].rsplit(".", 1)[-1]}: {d["error"][:80]}'
                          for d in letters)
        print("dead letters:", reasons.most_common(5))
    return {"produced": len(event_ids),
            "predicted": len(set(predicted) & event_ids),
            "predicted twice": len(predicted) - len(set(predicted)),
            "dead-lettered": len(letters),
            "in the training log": len(set(trained) & event_ids),
            "learned": int(learner_state(s).get("updates") or 0)}


def test_a_redis_restart_mid_stream_loses_and_parks_nothing(settings, worker):
    topics = PipelineTopics.for_spec(PIPELINES["fraud"], settings.namespace)
    emissions = list(pipeline_history(PIPELINES["fraud"], N, time.time(), seed=3)[1])
    event_ids = {e.record.event_id for e in emissions if e.kind == "event"}
    stack = LocalStack(settings)
    producer = _produce_paced(settings, topics, emissions)
    time.sleep(3.0)
    stack.down(("redis",))
    time.sleep(5.0)
    stack.up(services=("redis",))
    producer.join()
    try:
        wait_for(lambda: int(learner_state(settings).get("updates") or 0) >= N, 180,
                 f"{N} labels learned")
    finally:
        accounting = _account(settings, topics, event_ids)
        print("redis restart:", json.dumps(accounting))
    assert accounting == {"produced": N, "predicted": N, "predicted twice": 0,
                          "dead-lettered": 0, "in the training log": N, "learned": N}


@pytest.fixture
def backlog_settings(settings):
    from driftline.kafka_admin import ensure_pipeline_topics
    from driftline.namespaces import scratch_namespace
    from tests.integration.conftest import free_port

    with scratch_namespace(settings, f"{settings.namespace}-term",
                           worker_port=free_port()) as s:
        ensure_pipeline_topics(s, "fraud")
        yield s


def test_sigterm_while_learning_a_backlog_stops_within_30s_and_loses_nothing(
        backlog_settings, logs):
    """A worker stopped (SIGTERM) while it learns a backlog exits within 30 s, and the next
    one learns what is left: each label once. (It once never exited: Faust's shutdown
    waited for a training record in flight.)"""
    from driftline.processes import worker_process
    from driftline.producer import produce

    s, n = backlog_settings, 20_000
    report = produce(s, "fraud", pipeline_history(PIPELINES["fraud"], n, time.time(),
                                                  seed=4)[1], speed=None)
    assert report.labels == n
    (logs / "term").mkdir(exist_ok=True)
    first = worker_process(s, logs / "term", ["fraud"]).start()
    try:
        wait_for(lambda: int(learner_state(s).get("updates") or 0) >= 2000, 120,
                 "learning under way")
        started = time.monotonic()
        first.stop(timeout=60.0)
        took = time.monotonic() - started
    finally:
        first.kill()
    print(f"SIGTERM while learning: exited in {took:.1f}s with {first.proc.returncode}, "
          f"{learner_state(s).get('updates')} of {n} labels learned")
    assert took < 30.0 and first.proc.returncode == 0

    second = worker_process(s, logs / "term", ["fraud"]).start()
    try:
        wait_for(lambda: int(learner_state(s).get("updates") or 0) >= n, 180,
                 f"{n} labels learned after the restart")
        time.sleep(2.0)  # a label learned twice would show by now
        status = learner_state(s)
    finally:
        second.stop()
    topics = PipelineTopics.for_spec(PIPELINES["fraud"], s.namespace)
    trained = [t["event_id"] for t in read_all(s, topics.training)]
    assert len(set(trained)) == n
    assert int(status["updates"]) == n
