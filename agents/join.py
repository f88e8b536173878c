"""The join: a snapshot meets its label, in either arrival order, by event id.

::

    <p>.join   (B: a scoring batch's snapshots, sent where their labels will land, keyed
                by their events' partition;
                L: labels forwarded from another partition)  --join--> <p>.training
    <p>.labels (labels, as the user's producer partitioned them)  --join-->

One agent reads both topics. They have the same partition count, so Faust assigns their
partition ``n`` to the same worker, and the scorer sends each snapshot to the partition
the pipeline's ``labels_partitioner`` gives its event id: the label lands there too and
joins it without another hop. A label found on another partition (its producer
partitions otherwise, or it has no key) is forwarded to its snapshot's partition.

The first of the two to arrive waits in the ``pending`` table; the second completes the
training example. Entries older than the label-delay bound (in event time) are dropped
and counted. Event time, on a join partition, is the oldest of what its sources (the
events' partitions, scored by any worker) have reached (:class:`JoinClock`): a scorer
behind the others (a worker recovering, a replay of history) sends snapshots the labels
waiting for them must still be there for.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agents.consume import DeadLetters
from agents.outputs import Outputs
from monitoring import metrics
from streams.declarations import PipelineSpec
from streams.schemas import (
    InvalidRecord,
    Snapshot,
    TrainingExample,
    decode_json,
    field_errors,
    parse,
)
from streams.topics import PipelineTopics

SNAPSHOT_BATCH = TypeAdapter(list[Snapshot])
# A source that sent no snapshot for this long (wall clock) no longer holds a join
# partition's event time back: its partition has no events, or its worker is gone for
# longer than a failover takes.
SOURCE_IDLE_SECONDS = 300.0


class JoinClock:
    """The event time one join partition has reached: the oldest, over the sources that
    feed it (the events' partitions), of the newest snapshot each sent. A source not heard
    from for ``idle`` seconds stops counting (each is presumed heard from at the start);
    the time never goes back.

    The newest snapshot of any source was not enough: with two workers, one scoring a
    backlog ahead of the other (which was still recovering its tables), it expired
    thousands of labels whose snapshots the slower one had yet to send.

    >>> clock = JoinClock(sources=2, idle=60.0, now=0.0)
    >>> clock.advance(0, 1_000.0, at=1.0); clock.time(at=1.0)  # source 1 not heard yet
    0.0
    >>> clock.advance(1, 400.0, at=2.0); clock.time(at=2.0)
    400.0
    >>> clock.advance(0, 1_100.0, at=61.0); clock.time(at=62.5)  # source 1 idle
    1100.0
    >>> clock.advance(1, 500.0, at=63.0); clock.time(at=63.0)  # back, behind: no going back
    1100.0
    """

    def __init__(self, sources: int, idle: float, now: float) -> None:
        self.idle = idle
        self._newest: dict[int, float] = {}
        self._heard = dict.fromkeys(range(sources), now)
        self._time = 0.0

    def advance(self, source: int, event_time: float, at: float) -> None:
        self._newest[source] = max(self._newest.get(source, -math.inf), event_time)
        self._heard[source] = at

    def time(self, at: float) -> float:
        live = [self._newest.get(source, -math.inf)
                for source, heard in self._heard.items() if at - heard < self.idle]
        if live:
            self._time = max(self._time, min(live))
        return self._time


class LabelJoin:
    """Handles batches of the join and labels topics for one pipeline."""

    def __init__(self, spec: PipelineSpec, topics: PipelineTopics, pending: Any,
                 outputs: Outputs, deadletters: DeadLetters,
                 partition_of: Callable[[str], int], delay_bound: float,
                 sources: int) -> None:
        self.spec = spec
        self.topics = topics
        self.pending = pending  # a CachedTable: event id -> {"p", "t", "snapshot", "label"}
        self.outputs = outputs
        self.deadletters = deadletters
        self.partition_of = partition_of
        self.delay_bound = delay_bound
        self.sources = sources  # partitions of the events topic
        # Per join partition: (event time, event id) of pending entries, oldest first; and
        # the ids of all of them, so that a new event's snapshot costs no table read.
        self._expiry: dict[int, list[tuple[float, str]]] = {}
        self._present: set[str] = set()
        self._loaded = False
        # Per join partition: its event time. Labels do not move it: their timestamps come
        # from another system's clock.
        self._clocks: dict[int, JoinClock] = {}
        name = spec.name
        self._labels_ok = metrics.EVENTS.labels(pipeline=name, kind="label", outcome="ok")
        self._forwarded = metrics.LABELS_FORWARDED.labels(pipeline=name)
        self._joined = metrics.JOINED.labels(pipeline=name)

    async def handle(self, records: Sequence[Any]) -> None:
        self._load()
        now = time.monotonic()
        touched: dict[int, Any] = {}  # partition -> its newest record of the batch
        for rec in records:
            msg = rec.message
            from_labels = msg.topic == self.topics.labels
            try:
                items = self._items(rec, from_labels)
                if items is None:
                    continue  # forwarded
                newest = -math.inf  # of the record's snapshots
                for is_snapshot, item in items:
                    self._join_one(is_snapshot, item, rec)
                    if is_snapshot:
                        newest = max(newest, item["event_time"])
                if newest > -math.inf:
                    # A scoring batch's record is keyed by its events' partition.
                    source = int(rec.key) if rec.key and rec.key.isdigit() else -1
                    self._clock(msg.partition, now).advance(source, newest, now)
                touched[msg.partition] = rec
            except InvalidRecord as exc:
                self.deadletters.send(rec, exc, "label" if from_labels else "join")
        for partition, rec in touched.items():
            self._expire(partition, rec, self._clock(partition, now).time(now))
        self.pending.flush()

    def _clock(self, partition: int, now: float) -> JoinClock:
        clock = self._clocks.get(partition)
        if clock is None:
            clock = self._clocks[partition] = JoinClock(self.sources, SOURCE_IDLE_SECONDS, now)
        return clock

    def _items(self, rec: Any, from_labels: bool) -> list[tuple[bool, dict]] | None:
        """The snapshots and labels a record carries, as ``(is_snapshot, fields)``; None
        for a label forwarded to its snapshot's partition."""
        if from_labels:
            label = parse(self.spec.label_type, rec.value)
            self._labels_ok.inc()
            event_id = self.spec.event_id_of(label)
            target = self.partition_of(event_id)
            if target != rec.message.partition:
                self._forwarded.inc()
                self.outputs.send(self.topics.join, event_id.encode(), b"L" + rec.value,
                                  partition=target)
                return None
            return [(False, label.model_dump())]
        kind, body = rec.value[:1], rec.value[1:]
        if kind == b"B":  # snapshots of one scoring batch
            try:
                return [(True, snap.model_dump()) for snap in SNAPSHOT_BATCH.validate_json(body)]
            except ValidationError as exc:
                raise InvalidRecord(field_errors(exc)) from None
        if kind == b"S":
            return [(True, parse(Snapshot, body).model_dump())]
        if kind == b"L":
            return [(False, parse(self.spec.label_type, body).model_dump())]
        raise InvalidRecord({"$": f"unknown join record kind {kind!r}"})

    def _join_one(self, is_snapshot: bool, item: dict, rec: Any) -> None:
        spec = self.spec
        partition = rec.message.partition  # the table's partition too
        if is_snapshot:
            event_id, event_time = item["event_id"], item["event_time"]
        else:
            label = spec.label_type.model_construct(**item)
            event_id, event_time = spec.event_id_of(label), spec.label_time_of(label)
        stored = self.pending.get(event_id, rec) if event_id in self._present else None
        entry = dict(stored) if stored else {"p": partition, "t": event_time}
        entry["snapshot" if is_snapshot else "label"] = item
        if "snapshot" in entry and "label" in entry:
            snapshot, label = _fields(entry["snapshot"]), _fields(entry["label"])
            label = spec.label_type.model_construct(**label)
            example = TrainingExample.model_construct(
                **snapshot, label=spec.target_of(label), label_time=spec.label_time_of(label))
            self.outputs.send(self.topics.training, event_id.encode(), example.to_json())
            if stored is not None:
                self.pending.delete(event_id, rec)
                self._present.discard(event_id)
            self._joined.inc()
        else:
            entry["t"] = min(entry["t"], event_time)
            self.pending.set(event_id, entry, rec)
            self._present.add(event_id)
            heapq.heappush(self._expiry.setdefault(partition, []), (entry["t"], event_id))

    def reload(self) -> None:
        """Partitions moved: read the pending entries again before the next record."""
        self._loaded = False
        self.pending.clear()
        self._clocks = {}  # sources heard from again, from now

    def _load(self) -> None:
        """Rebuild the expiry queues and the ids of pending entries from the table (after
        a start or a rebalance, once its partitions are recovered)."""
        if self._loaded:
            return
        self._loaded = True
        self._expiry, self._present = {}, set()
        for event_id, entry in self.pending.table.items():
            if entry:
                self._present.add(event_id)
                heapq.heappush(self._expiry.setdefault(entry["p"], []), (entry["t"], event_id))

    def _expire(self, partition: int, current: Any, event_time: float) -> None:
        # Only keys of the partition being processed: a deletion goes to the changelog
        # partition of the current record.
        queue = self._expiry.get(partition, [])
        bound = event_time - self.delay_bound
        while queue and queue[0][0] < bound:
            _, event_id = heapq.heappop(queue)
            if event_id not in self._present:
                continue  # joined meanwhile
            entry = self.pending.get(event_id, current)
            if entry is None:
                continue
            kind = "snapshot" if "snapshot" in entry else "label"
            metrics.JOIN_EXPIRED.labels(pipeline=self.spec.name, kind=kind).inc()
            self.pending.delete(event_id, current)
            self._present.discard(event_id)


def _fields(stored: dict | str) -> dict:
    """A pending entry's snapshot or label: its fields (a JSON text in entries written
    before they were kept as objects)."""
    return decode_json(stored) if isinstance(stored, str) else stored
