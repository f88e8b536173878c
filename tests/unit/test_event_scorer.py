"""The worker's scorer: what it sends for an event, the first time and when the event
comes again after a crash."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

from agents.scoring import EventScorer
from monitoring import metrics
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics

TOPICS = PipelineTopics.for_pipeline("fraud", "t")


class _Table:
    def __init__(self) -> None:
        self.data: dict = {}
        self.writes = 0

    def get(self, key, record):
        return self.data.get(key)

    def set(self, key, value, record):
        self.data[key] = value
        self.writes += 1

    def flush(self):
        pass


class _Stores:
    async def forgotten_among(self, entities):
        return {}

    async def put_many(self, rows):
        pass


class _Outputs:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    def send(self, topic, key, value, partition=None):
        self.sent.append((topic, key, value))


def _scorer():
    table, outputs = _Table(), _Outputs()
    scorer = EventScorer(PIPELINES["fraud"], TOPICS, table, _Stores(), _Stores(),
                         NS(current=None), None, outputs, deadletters=None,
                         join_partitions=4)
    return scorer, table, outputs


def _payment(offset: int, event_id: str):
    value = json.dumps({"event_id": event_id, "card_id": "c-1", "merchant_id": "m",
                        "amount": 12.0, "ts": 1_000.0 + offset}).encode()
    return NS(key=b"c-1", value=value,
              message=NS(topic=TOPICS.events, partition=0, offset=offset, timestamp=0.0))


def _sent(outputs, topic):
    return [v for t, _, v in outputs.sent if t == topic]


async def test_an_event_again_after_a_crash_sends_its_outputs_again_not_its_state():
    scorer, table, outputs = _scorer()
    await scorer.handle([_payment(0, "e0"), _payment(1, "e1")])
    state, writes = table.data["c-1"], table.writes
    ok = metrics.EVENTS.labels(pipeline="fraud", kind="event", outcome="ok")
    counted = ok._value.get()
    # Redelivered (its state applied, its outputs perhaps never sent): sent again.
    await scorer.handle([_payment(1, "e1")])
    predictions = [json.loads(v)["event_id"] for v in _sent(outputs, TOPICS.predictions)]
    assert predictions == ["e0", "e1", "e1"]
    snapshots = [s["event_id"] for v in _sent(outputs, TOPICS.join)
                 for s in json.loads(v[1:])]
    assert snapshots == ["e0", "e1", "e1"]
    assert table.data["c-1"] == state and table.writes == writes  # applied once
    assert ok._value.get() == counted  # counted once: a duplicate, not a new event
