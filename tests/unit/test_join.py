"""The label join's expiry: a pending label waits for the slowest source's snapshot, and
goes once every source has moved past its delay bound."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

from agents.join import LabelJoin
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics

BOUND = 3600.0
TOPICS = PipelineTopics.for_pipeline("fraud", "t")


class _Table:
    """What the join uses of a :class:`~agents.tables.CachedTable`, in a dict."""

    def __init__(self) -> None:
        self.data: dict = {}
        self.table = self.data  # the join reads ``.table.items()`` when it (re)loads

    def get(self, key, record):
        return self.data.get(key)

    def set(self, key, value, record):
        self.data[key] = value

    def delete(self, key, record):
        self.data.pop(key, None)

    def flush(self):
        pass

    def clear(self):
        pass


class _Outputs:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic, key, value, partition=None):
        self.sent.append((topic, key, value))


def _join() -> tuple[LabelJoin, _Outputs, _Table]:
    outputs, table = _Outputs(), _Table()
    join = LabelJoin(PIPELINES["fraud"], TOPICS, table, outputs, deadletters=None,
                     partition_of=lambda event_id: 0, delay_bound=BOUND, sources=2)
    return join, outputs, table


def _label(event_id: str, ts: float, offset: int = 0):
    value = json.dumps({"event_id": event_id, "is_fraud": True, "ts": ts}).encode()
    return NS(key=event_id.encode(), value=value,
              message=NS(topic=TOPICS.labels, partition=0, offset=offset))


def _snapshots(source: int, *events: tuple[str, float], offset: int = 0):
    body = [{"event_id": e, "entity": "card-1", "event_time": t, "features": {"amount": 1.0},
             "score": 0.5, "model_version": "v0"} for e, t in events]
    return NS(key=str(source).encode(), value=b"B" + json.dumps(body).encode(),
              message=NS(topic=TOPICS.join, partition=0, offset=offset))


def _trained(outputs: _Outputs) -> list[str]:
    return [json.loads(v)["event_id"] for t, _, v in outputs.sent if t == TOPICS.training]


async def test_a_label_waits_for_the_source_that_is_behind():
    join, outputs, _ = _join()
    await join.handle([_label("late", ts=1_010.0)])
    # Source 0 runs hours of event time ahead; source 1 has not sent yet.
    await join.handle([_snapshots(0, ("ahead", 1_000.0 + 5 * BOUND), offset=1)])
    await join.handle([_snapshots(1, ("late", 1_000.0), offset=2)])
    assert _trained(outputs) == ["late"]


async def test_entries_expire_once_every_source_is_past_the_bound():
    join, outputs, table = _join()
    await join.handle([_label("orphan", ts=1_010.0)])
    far = 1_010.0 + BOUND + 1.0
    await join.handle([_snapshots(0, ("a", far), offset=1)])
    assert "orphan" in table.data  # source 1 still at the start
    await join.handle([_snapshots(1, ("b", far), offset=2)])
    assert "orphan" not in table.data
    assert _trained(outputs) == []
