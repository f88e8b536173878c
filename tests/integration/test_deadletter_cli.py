"""``driftline deadletter list | replay`` against the real broker, called in process: the
worker's dead letters listed with their reasons, sent back to their source topics once
each, however often the replay runs and wherever one stops; and the ``topics`` and
``worker`` commands' leftovers (the real partition counts, a layout error without a
traceback).

The worker runs in a namespace of this module's own: its dead letters are counted exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

import driftline.tools.deadletters
from driftline.adapters.kafka_admin import ensure_topics
from driftline.adapters.topic_reader import read_topic
from driftline.cli import main
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from streams.catalog.fraud import FRAUD
from streams.schemas import DeadLetter
from streams.topics import PipelineTopics
from tests.integration.conftest import own_namespace, read_all, send, wait_for

pytestmark = pytest.mark.integration

settings, logs, worker, api, worker_metrics = own_namespace("dlq", ["fraud"])


@pytest.fixture
def cli(monkeypatch, capsys):
    """``driftline ARGV...`` in this process, with ``settings`` as its environment: the
    exit code and what it printed."""
    def run(s, *argv: str) -> tuple[int, str]:
        for name, value in s.to_env().items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as done:
            main(list(argv))
        return done.value.code, capsys.readouterr().out
    return run


@pytest.fixture
def scratch(settings):
    """A namespace of the test's own, with no worker: what is sent back stays as sent."""
    with scratch_namespace(settings, f"{settings.namespace}-{uuid.uuid4().hex[:6]}") as s:
        yield s


def _letters(s, topics, run: str) -> list[dict]:
    return [d for d in read_all(s, topics.deadletter) if run in d["value"]]


def test_list_then_replay_sends_each_dead_letter_back_once(settings, worker, cli):
    topics = PipelineTopics.for_spec(FRAUD, settings.namespace)
    run, now = uuid.uuid4().hex[:8], time.time()
    events = [(f"card-{run}-{i}", json.dumps({
        "event_id": f"bad-{run}-{i}", "card_id": f"card-{run}-{i}", "merchant_id": "m-1",
        "amount": "12.50", "ts": now - 60}).encode()) for i in range(5)]
    labels = [(f"bad-{run}-l{i}", json.dumps({
        "event_id": f"bad-{run}-l{i}", "is_fraud": "yes", "ts": now}).encode())
        for i in range(2)]
    send(settings, topics.events, events)
    send(settings, topics.labels, labels)
    wait_for(lambda: len(_letters(settings, topics, run)) == 7, 60, "7 dead letters")

    code, out = cli(settings, "deadletter", "list", "fraud", "--json")
    listed = json.loads(out)
    assert code == 0
    assert sorted(d["error"] for d in listed["letters"] if run in d["value"]) == (
        ["amount: Input should be a valid number"] * 5
        + ["is_fraud: Input should be a valid boolean"] * 2)
    assert {d["status"] for d in listed["letters"]} == {"new"}
    code, out = cli(settings, "deadletter", "list", "fraud", "--reason", "valid NUMBER",
                    "--since", "10m")
    assert code == 0
    assert out.count(f"{topics.events}[") == 5 and topics.labels not in out
    assert out.splitlines()[-1].split() == ["5", "amount:", "Input", "should", "be", "a",
                                            "valid", "number"]

    code, out = cli(settings, "deadletter", "replay", "fraud")
    assert code == 0, out
    assert f"sent back 5 to {topics.events}" in out
    assert f"sent back 2 to {topics.labels}" in out
    # Still malformed: the worker dead-letters each copy once more, and only once.
    wait_for(lambda: len(_letters(settings, topics, run)) == 14, 60, "7 more dead letters")
    for topic, sent in ((topics.events, events), (topics.labels, labels)):
        values = [r.value for r in read_topic(settings, topic) if run.encode() in r.value]
        assert sorted(values) == sorted(2 * [v for _, v in sent])

    code, out = cli(settings, "deadletter", "replay", "fraud")
    assert code == 0 and out.splitlines()[-1] == "0 dead letter(s) replayed"
    assert "left 7: replayed already" in out and "left 7: refailed" in out
    time.sleep(3.0)  # time for the worker to dead-letter anything sent
    assert len(_letters(settings, topics, run)) == 14
    code, out = cli(settings, "deadletter", "list", "fraud", "--json")
    statuses = [d["status"] for d in json.loads(out)["letters"] if run in d["value"]]
    assert sorted(statuses) == ["refailed"] * 7 + ["replayed"] * 7


@pytest.mark.parametrize("stop_at", ["copies", "sent marks"])
def test_a_replay_stopped_midway_is_finished_by_the_next_without_sending_twice(
        scratch, cli, monkeypatch, stop_at):
    """The ledger's steps: ``sending`` marks, the copies, ``sent`` marks. A replay that
    stops before the copies sends them next time; one that stops after them finds them
    in the source topic and sends nothing."""
    topics = PipelineTopics.for_spec(FRAUD, scratch.namespace)
    ensure_topics(scratch, {topics.events: 2, topics.deadletter: 1})
    run = uuid.uuid4().hex[:8]
    send(scratch, topics.events, [(f"card-{i}", f'{{"run": "{run}", "i": {i}}}'.encode())
                                  for i in range(6)])
    # Dead letters as the worker writes them, one of them twice (a redelivery).
    records = list(read_topic(scratch, topics.events))
    send(scratch, topics.deadletter, [(r.key.decode(), DeadLetter(
        source_topic=r.topic, partition=r.partition, offset=r.offset, key=r.key.decode(),
        value=r.value.decode(), error="i: not wanted", fields=["i"], at=time.time()
    ).to_json()) for r in records + records[:1]])

    deliver, calls = driftline.tools.deadletters._deliver, []
    step = {"copies": 2, "sent marks": 3}[stop_at]

    def stopping(producer, messages, timeout=30.0):
        calls.append(len(messages))
        if len(calls) == step:
            raise RuntimeError("the broker went away")
        return deliver(producer, messages, timeout)

    monkeypatch.setattr(driftline.tools.deadletters, "_deliver", stopping)
    code, _ = cli(scratch, "deadletter", "replay", "fraud")
    assert code == 1
    monkeypatch.setattr(driftline.tools.deadletters, "_deliver", deliver)
    code, out = cli(scratch, "deadletter", "list", "fraud")
    assert "6 dead letter(s) (6 interrupted)" in out

    code, out = cli(scratch, "deadletter", "replay", "fraud")
    assert code == 0
    if stop_at == "copies":
        assert out.splitlines()[-1] == "6 dead letter(s) replayed"
    else:
        assert out.splitlines()[0].startswith("6 sent back by an interrupted replay")
        assert out.splitlines()[-1] == "0 dead letter(s) replayed"
    copies = [r for r in read_topic(scratch, topics.events) if r not in records]
    assert sorted((r.partition, r.key, r.value) for r in copies) == sorted(
        (r.partition, r.key, r.value) for r in records)  # each once, where it was
    code, out = cli(scratch, "deadletter", "list", "fraud")
    assert "6 dead letter(s) (6 replayed)" in out


def test_topics_prints_the_counts_the_broker_has(scratch, cli):
    topics = PipelineTopics.for_spec(FRAUD, scratch.namespace)
    ensure_topics(scratch, {topics.events: 1, topics.labels: 3})
    code, out = cli(scratch, "topics", "fraud")
    counts = dict(line.split("\t") for line in out.splitlines())
    assert code == 0
    assert counts[topics.events] == counts[topics.predictions] == "1 partition(s)"
    assert counts[topics.labels] == counts[topics.join] == "3 partition(s)"


def test_a_worker_refused_for_its_topics_layout_says_why_without_a_traceback(scratch):
    topics = PipelineTopics.for_spec(FRAUD, scratch.namespace)
    ensure_topics(scratch, {topics.events: 1, topics.labels: 1, topics.join: 4})
    s = scratch.with_overrides(worker_port=free_port())
    done = subprocess.run([sys.executable, "-m", "driftline", "worker", "--pipeline", "fraud"],
                          env={**os.environ, **s.to_env()}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert f"{topics.join} has 4 partitions" in done.stderr
