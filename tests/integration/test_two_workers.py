"""Two workers in one consumer group started together on a backlog (a rebalance while
events, labels and snapshots are in flight): every labeled event reaches the training
log, and the learner learns each exactly once.

It caught a join that expired labels by the newest snapshot of any scorer: with one
worker's scorer hours of event time ahead of the other's (still recovering its tables),
3,000-5,000 of 30,000 labels expired before their snapshots came (see
:class:`agents.join.JoinClock`).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import pytest

from driftline.adapters.kafka_admin import ensure_pipeline_topics
from driftline.adapters.topic_reader import read_topic
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import worker_process
from driftline.tools.synthetic import produce
from streams.generators import pipeline_history
from streams.pipelines import PIPELINES
from tests.integration.conftest import free_port, learner_state, wait_for

pytestmark = pytest.mark.integration

N = 30_000


@pytest.fixture
def pair(settings, logs):
    with scratch_namespace(settings, f"{settings.namespace}-pair",
                           worker_port=free_port()) as first:
        ensure_pipeline_topics(first, "fraud")
        second = first.with_overrides(
            worker_port=free_port(),
            data_dir=Path(tempfile.mkdtemp(prefix="pair-", dir=settings.data_dir)),
            registry_uri=first.registry_uri, registry_artifacts=first.registry_artifacts)
        yield first, second


def _updates(settings) -> int:
    return int(learner_state(settings).get("updates") or 0)


def test_a_second_worker_mid_stream_loses_and_doubles_nothing(pair, logs):
    first, second = pair
    report = produce(first, "fraud",
                     pipeline_history(PIPELINES["fraud"], N, time.time(), seed=1)[1],
                     speed=None)
    assert (report.events, report.labels) == (N, N)
    for i in range(2):
        (logs / f"pair-{i}").mkdir(exist_ok=True)
    procs = [worker_process(s, logs / f"pair-{i}", ["fraud"])
             for i, s in enumerate((first, second))]
    try:
        # Spawned together, as an operator scales out: the first ready consumes alone
        # until the second joins the group, and partitions move under load.
        starters = [threading.Thread(target=proc.start) for proc in procs]
        for starter in starters:
            starter.start()
        for starter in starters:
            starter.join()
        # Both up: a worker that crashed at start would leave the other to do it all, and
        # the accounting below would pass without a second worker ever joining.
        assert all(proc.proc is not None and proc.proc.poll() is None for proc in procs), (
            "a worker did not start: see its log under " + str(logs))
        try:
            wait_for(lambda: _updates(first) >= N, 150, f"{N} labels learned")
        except AssertionError:
            ids = {json.loads(r.value)["event_id"]
                   for r in read_topic(first, f"{first.namespace}.fraud.training", 30)}
            print(f"STALLED: training log {len(ids)} distinct, learner {learner_state(first)}")
            raise
        time.sleep(3.0)  # a label learned twice would show by now
        training = [json.loads(r.value)["event_id"]
                    for r in read_topic(first, f"{first.namespace}.fraud.training", 30)]
        status = learner_state(first)
    finally:
        for proc in procs:
            proc.stop()
    print(f"two workers: {N} labeled events produced, {len(set(training))} distinct in the "
          f"training log ({len(training)} records), learner: {status.get('updates')} "
          f"learned, {status.get('duplicates')} duplicates skipped")
    assert len(set(training)) == N
    assert int(status["updates"]) == N
