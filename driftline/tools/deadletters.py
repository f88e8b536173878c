"""``driftline deadletter list | replay``: what the worker refused, and sending it back.

A dead letter (:class:`~streams.schemas.DeadLetter`) names the record it stands for by
its source topic, partition and offset, and keeps that record's key and value. ``list``
reads ``<p>.deadletter``; ``replay`` sends the chosen letters' records back to the
partition they came from, so that a worker fixed since takes them again.

**Each record is sent back once**, through a ledger: the compacted one-partition topic
``<p>.deadletter.replayed``, keyed by the record's source coordinates, whose last mark
per key says how far its replay went. A batch is sent in three steps, each waited for:

1. a ``sending`` mark per letter, with the partition's end offset before the send and
   the timestamp its copy will carry (unique in the batch);
2. the copies, to the source partitions;
3. a ``sent`` mark per letter, with the offset its copy landed at.

A replay that stops between 1 and 3 (a crash, a broker gone) leaves ``sending`` marks;
the next one reads each such partition from the recorded end and marks ``sent`` the
letters whose copy is there (same key, value and timestamp), and sends the others. The
worker reads uncommitted records, so a Kafka transaction would not hide an aborted copy
from it: the copy in the log is the only truth, and it is checked. Records that reach
the dead-letter topic twice (the worker redelivers after a crash) share their source
coordinates: they are one letter, listed and sent back once.

The copy of a record that is still wrong is dead-lettered again, under the coordinates
of the copy: a new letter, ``refailed``, that ``replay`` leaves alone unless told
(``--refailed``, after a second fix), so replaying twice sends nothing twice.
"""

from __future__ import annotations

import functools
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import NewTopic

from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import admin, partition_counts
from driftline.adapters.kafka_clients import kafka_producer
from driftline.adapters.topic_reader import read_range, read_topic, watermarks
from streams.pipelines import PIPELINES
from streams.schemas import DeadLetter, InvalidRecord, Record, parse
from streams.topics import PipelineTopics

BATCH = 500  # letters a ledger round trip covers: at most this many re-checked after a crash


class Source(NamedTuple):
    """Where a dead record was read: a letter's identity."""

    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, letter: DeadLetter) -> Source:
        return cls(letter.source_topic, letter.partition, letter.offset)

    def key(self) -> bytes:
        """Its ledger key (topic names cannot hold a ``/``)."""
        return f"{self.topic}/{self.partition}/{self.offset}".encode()

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class ReplayMark(Record):
    """How far one letter's replay went, on the ledger (its last mark per key counts)."""

    source_topic: str
    partition: int  # the copy goes back to the partition the record came from
    offset: int
    state: Literal["sending", "sent"]
    after: int      # the partition's end before the send: the copy lands at or after it
    stamp_ms: int   # the copy's timestamp: with its key and value, how it is recognised
    copy_offset: int | None = None  # where the copy landed, once sent
    at: float

    @property
    def source(self) -> Source:
        return Source(self.source_topic, self.partition, self.offset)

    @property
    def copy(self) -> Source | None:
        return (None if self.copy_offset is None
                else Source(self.source_topic, self.partition, self.copy_offset))


# ---- choosing letters ---------------------------------------------------------------

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """Epoch seconds from ``text``: epoch seconds, an ISO time (local time when it names
    no zone, as ``list`` prints them) or a span back from ``now`` (``90s``, ``10m``,
    ``2h``, ``1d``).

    >>> parse_since("1700000000", now=0), parse_since("10m", now=1000.0)
    (1700000000.0, 400.0)
    >>> parse_since("2023-11-14T22:13:20Z", now=0)
    1700000000.0
    >>> parse_since("yesterday", now=0)
    Traceback (most recent call last):
    ...
    ValueError: --since 'yesterday': not epoch seconds, an ISO time or a span like 10m or 2h
    """
    if m := _RELATIVE.fullmatch(text.strip()):
        return now - float(m[1]) * _UNIT_SECONDS[m[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: not epoch seconds, an ISO time or a span like "
                         "10m or 2h") from None
    return (moment if moment.tzinfo else moment.astimezone()).timestamp()


@dataclass(frozen=True)
class Selection:
    """The letters an operator asks for: a reason (a regular expression searched in the
    error, any case) and a time (dead-lettered at or after it).

    >>> letter = DeadLetter(source_topic="fraud.events", partition=0, offset=7, key="c-1",
    ...                     value="{}", error="amount: Input should be a valid number",
    ...                     fields=["amount"], at=100.0)
    >>> sel = Selection.parse(reason="valid NUMBER", since="50", now=0)
    >>> sel.matches(letter), Selection.parse(since="101", now=0).matches(letter)
    (True, False)
    """

    reason: re.Pattern[str] | None = None
    since: float | None = None

    @classmethod
    def parse(cls, reason: str | None = None, since: str | None = None,
              now: float | None = None) -> Selection:
        """From the command line's text; ValueError names what is wrong."""
        try:
            pattern = re.compile(reason, re.IGNORECASE) if reason else None
        except re.error as exc:
            raise ValueError(f"--reason {reason!r}: {exc}") from None
        return cls(pattern, None if since is None
                   else parse_since(since, time.time() if now is None else now))

    def matches(self, letter: DeadLetter) -> bool:
        return ((self.reason is None or self.reason.search(letter.error) is not None)
                and (self.since is None or letter.at >= self.since))


def reason_class(error: str) -> str:
    """``error`` without its figures, so that letters refused for one reason count as one.

    >>> reason_class("ts: late: 312.500s behind the entity's newest event; "
    ...              "the allowed lateness is 60s")
    "ts: late: #s behind the entity's newest event; the allowed lateness is #s"
    """
    return re.sub(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", "#", error)


# ---- what the ledger says -----------------------------------------------------------

@dataclass(frozen=True)
class Ledger:
    """The last mark of each replayed letter."""

    marks: dict[Source, ReplayMark] = field(default_factory=dict)

    @functools.cached_property
    def copies(self) -> set[Source]:
        """Where copies landed: a letter from there is a replay dead-lettered again."""
        return {m.copy for m in self.marks.values() if m.copy is not None}

    def status(self, letter: DeadLetter) -> str:
        """``replayed``, ``interrupted`` (a replay stopped; the next one settles it),
        ``refailed`` (the copy of a replay, dead-lettered again) or ``new``."""
        mark = self.marks.get(Source.of(letter))
        if mark is not None:
            return "replayed" if mark.state == "sent" else "interrupted"
        return "refailed" if Source.of(letter) in self.copies else "new"


@dataclass
class ReplayPlan:
    send: list[DeadLetter]
    skipped: Counter[str]  # why -> letters left alone


def plan_replay(letters: Iterable[DeadLetter], ledger: Ledger, selection: Selection,
                inputs: set[str], *, internal: bool = False,
                refailed: bool = False) -> ReplayPlan:
    """The selected letters to send back, in dead-letter order, and why the others are not.

    Only letters from the pipeline's ``inputs`` (events, labels), unless ``internal``: the
    join, training and control topics carry what Driftline wrote itself. A letter whose
    value the dead letter could not keep byte for byte (it was not UTF-8) is not sent.
    """
    plan = ReplayPlan([], Counter())
    for letter in letters:
        if not selection.matches(letter):
            continue
        status = ledger.status(letter)
        if status == "replayed":
            plan.skipped["replayed already"] += 1
        elif status == "refailed" and not refailed:
            plan.skipped["refailed (a replay's copy; --refailed sends it)"] += 1
        elif letter.source_topic not in inputs and not internal:
            plan.skipped[f"from {letter.source_topic} (internal; --internal sends it)"] += 1
        elif "\ufffd" in letter.value or "\ufffd" in (letter.key or ""):
            plan.skipped["not UTF-8 (the letter holds it altered)"] += 1
        else:
            plan.send.append(letter)
    return plan


# ---- reading ------------------------------------------------------------------------

def ledger_topic(topics: PipelineTopics) -> str:
    return f"{topics.deadletter}.replayed"


def read_letters(settings: Settings, topics: PipelineTopics) -> list[DeadLetter]:
    """The pipeline's dead letters, oldest first, one per source record."""
    if topics.deadletter not in partition_counts(settings):
        return []
    seen: dict[Source, DeadLetter] = {}
    for record in read_topic(settings, topics.deadletter):
        try:
            letter = parse(DeadLetter, record.value)
        except InvalidRecord:
            continue  # not the worker's: nothing to list or send back
        seen.setdefault(Source.of(letter), letter)
    return list(seen.values())


def read_ledger(settings: Settings, topics: PipelineTopics) -> Ledger:
    name = ledger_topic(topics)
    if name not in partition_counts(settings):
        return Ledger()
    marks = (parse(ReplayMark, r.value) for r in read_topic(settings, name))
    return Ledger({m.source: m for m in marks})


def listing(settings: Settings, pipeline: str,
            selection: Selection) -> list[tuple[DeadLetter, str]]:
    """The selected letters, oldest first, each with its :meth:`Ledger.status`."""
    topics = PipelineTopics.for_spec(PIPELINES[pipeline], settings.namespace)
    ledger = read_ledger(settings, topics)
    return [(letter, ledger.status(letter)) for letter in read_letters(settings, topics)
            if selection.matches(letter)]


# ---- replaying ----------------------------------------------------------------------

@dataclass
class ReplayReport:
    sent: Counter[str] = field(default_factory=Counter)  # source topic -> copies sent
    recovered: int = 0  # copies an interrupted replay had sent, found and marked
    skipped: Counter[str] = field(default_factory=Counter)


def replay(settings: Settings, pipeline: str, selection: Selection, *,
           internal: bool = False, refailed: bool = False) -> ReplayReport:
    """Send the selected dead letters' records back to their source partitions, each
    once (see the module's docstring). Run one replay of a pipeline at a time: two at
    once would both send what neither has marked yet."""
    topics = PipelineTopics.for_spec(PIPELINES[pipeline], settings.namespace)
    ledger_name = ledger_topic(topics)
    _ensure_ledger(settings, ledger_name)
    letters = read_letters(settings, topics)
    ledger = read_ledger(settings, topics)
    producer = kafka_producer(settings)
    report = ReplayReport()
    report.recovered, ledger = _settle_interrupted(settings, producer, ledger_name, ledger,
                                                   letters)
    plan = plan_replay(letters, ledger, selection, {topics.events, topics.labels},
                       internal=internal, refailed=refailed)
    report.skipped = plan.skipped
    for start in range(0, len(plan.send), BATCH):
        batch = plan.send[start:start + BATCH]
        _send_batch(settings, producer, ledger_name, batch)
        report.sent.update(letter.source_topic for letter in batch)
    return report


def _ensure_ledger(settings: Settings, name: str, timeout: float = 30.0) -> None:
    # Compacted, not deleted by retention: a mark must outlive the letter it is about.
    topic = NewTopic(name, num_partitions=1, replication_factor=1,
                     config={"cleanup.policy": "compact"})
    try:
        admin(settings).create_topics([topic], request_timeout=timeout)[name].result(timeout)
    except KafkaException as exc:
        if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
            raise


def _send_batch(settings: Settings, producer: Producer, ledger: str,
                letters: list[DeadLetter]) -> None:
    ends = {(t, p): watermarks(settings, t, p)[1]
            for t, p in {(letter.source_topic, letter.partition) for letter in letters}}
    stamp, now = int(time.time() * 1000), time.time()
    intents = [ReplayMark(source_topic=letter.source_topic, partition=letter.partition,
                          offset=letter.offset, state="sending",
                          after=ends[letter.source_topic, letter.partition],
                          stamp_ms=stamp + i, at=now)
               for i, letter in enumerate(letters)]
    _deliver(producer, [_mark(ledger, m) for m in intents])
    landed = _deliver(producer, [
        {"topic": m.source_topic, "partition": m.partition, "timestamp": m.stamp_ms,
         "key": _key(letter), "value": letter.value.encode()}
        for m, letter in zip(intents, letters, strict=True)])
    _deliver(producer, [_mark(ledger, _sent(m, offset))
                        for m, offset in zip(intents, landed, strict=True)])


def _settle_interrupted(settings: Settings, producer: Producer, ledger_name: str,
                        ledger: Ledger, letters: list[DeadLetter]) -> tuple[int, Ledger]:
    """Mark ``sent`` each interrupted letter whose copy is in its source partition; the
    others stay ``sending``, so they are chosen and sent again. Returns how many were
    found, and the ledger as it is now."""
    by_source = {Source.of(letter): letter for letter in letters}
    pending: dict[tuple[str, int], list[ReplayMark]] = {}
    for mark in ledger.marks.values():
        if mark.state == "sending" and mark.source in by_source:
            pending.setdefault((mark.source_topic, mark.partition), []).append(mark)
    found: list[ReplayMark] = []
    for (topic, partition), marks in pending.items():
        start = min(m.after for m in marks)
        _, end = watermarks(settings, topic, partition)
        copies = {(r.key, r.value, round(r.timestamp * 1000)): r.offset
                  for r in read_range(settings, topic, partition, start, end)}
        for m in marks:
            letter = by_source[m.source]
            offset = copies.get((_key(letter), letter.value.encode(), m.stamp_ms))
            if offset is not None and offset >= m.after:
                found.append(_sent(m, offset))
    if found:
        _deliver(producer, [_mark(ledger_name, m) for m in found])
    return len(found), Ledger({**ledger.marks, **{m.source: m for m in found}})


def _sent(mark: ReplayMark, copy_offset: int) -> ReplayMark:
    return mark.model_copy(update={"state": "sent", "copy_offset": copy_offset,
                                   "at": time.time()})


def _key(letter: DeadLetter) -> bytes | None:
    return None if letter.key is None else letter.key.encode()


def _mark(ledger: str, mark: ReplayMark) -> dict[str, Any]:
    return {"topic": ledger, "key": mark.source.key(), "value": mark.to_json()}


def _deliver(producer: Producer, messages: list[dict[str, Any]],
             timeout: float = 30.0) -> list[int]:
    """Send ``messages`` (keyword arguments of ``Producer.produce``) and wait for all: the
    offset each landed at. RuntimeError when any was not delivered: the step after it
    must not run (a ``sent`` mark for a copy that is not there would lose the letter)."""
    offsets = [-1] * len(messages)
    errors: list[str] = []

    def delivered(i: int):
        def on_delivery(err, msg) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                offsets[i] = msg.offset()
        return on_delivery

    for i, message in enumerate(messages):
        producer.produce(**message, on_delivery=delivered(i))
        producer.poll(0)
    if producer.flush(timeout) or errors:
        raise RuntimeError(f"{len(errors) or 'some'} of {len(messages)} records not delivered"
                           + (f"; first: {errors[0]}" if errors else f" in {timeout:.0f}s"))
    return offsets

