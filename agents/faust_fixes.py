"""Workarounds for faust-streaming (0.15.3) defects that break at-least-once; each names
the test that caught it. Remove them when Faust is fixed and the test still passes.

Also one for speed, :func:`deliver_directly`.

**Commits ahead of table changelogs.** A table write goes to the changelog through
Faust's ``ProducerBuffer`` (``send_soon``). Before committing offsets, Faust flushes that
buffer, but ``ProducerBuffer.flush_atmost`` returns as soon as 0.1 s pass without a send,
which is exactly what happens when the producer is busy. Offsets were then committed for
events whose state never reached the changelog; after a crash those events were neither
redelivered nor in the recovered table (seen here: one event lost for 22 of 300 cards in
``tests/integration/test_recovery.py``). :func:`flush_waits_for_delivery` makes the
buffer's flush wait until every message put before it has been delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import faust

from driftline.adapters.topic_reader import committed_offset, read_range, watermarks

log = logging.getLogger(__name__)
T = TypeVar("T")


def flush_waits_for_delivery(app: faust.App) -> None:
    buffer: Any = app.producer.buffer
    pending: set[asyncio.Future] = set()
    put = buffer.put

    def tracked_put(fut: asyncio.Future) -> None:
        pending.add(fut)
        fut.add_done_callback(pending.discard)
        put(fut)

    async def flush() -> None:
        # FutureMessage resolves when Kafka acknowledged the message (or it failed).
        waiting = list(pending)
        if waiting:
            await asyncio.gather(*waiting)

    buffer.put = tracked_put
    buffer.flush = flush


def deliver_directly(app: faust.App) -> None:
    """Deliver each fetched record to the agents' channels without two tasks per record
    while the flow runs.

    **Two tasks per record.** Faust's fetch loop (``Consumer._drain_messages``) hands each
    record to the agents with ``wait_first(deliver(record), suspend_flow.wait())``, so that
    a rebalance can abandon a delivery in progress: two tasks created and cancelled per
    record, most of its consumer's cost (a bare agent read 7,000 records/s here with it,
    31,500 without; benchmarks/ingest.py). While the flow runs (neither the consumer's flow
    nor the app's flow control suspended, so a delivery cannot wait for a rebalance), this
    awaits the delivery itself; otherwise Faust's own ``wait_first`` decides, as before.
    A stop cancels the fetch loop either way.
    """
    consumer: Any = app.consumer
    original = consumer.wait_first
    suspended = consumer.suspend_flow
    flowing = app.flow_control.is_active  # a delivery waits while it is not

    async def wait_first(*coros: Any, timeout: float | None = None) -> Any:
        if len(coros) == 2 and not suspended.is_set() and flowing():
            frame = getattr(coros[1], "cr_frame", None)
            if frame is not None and frame.f_locals.get("self") is suspended:
                coros[1].close()  # the suspension's wait, never started
                await coros[0]
                return None  # the fetch loop does not read the result
        return await original(*coros, timeout=timeout)

    consumer.wait_first = wait_first


def every(app: faust.App, seconds: float) -> Callable[[Callable], Callable]:
    """``app.timer(seconds)`` for a function whose failure is logged and tried again at
    the next round.

    **A timer that raises stops the worker.** Faust runs a timer as a service task, and
    mode crashes the whole app when a task raises: one Redis error in a periodic
    publication ended the worker (checked with a probe app: exit code 1).
    """
    def register(fun: Callable) -> Callable:
        @functools.wraps(fun)
        async def guarded(*args: Any) -> None:
            try:
                await fun(*args)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.warning("%s failed; the next round tries again", fun.__qualname__,
                            exc_info=True)

        return app.timer(seconds)(guarded)

    return register


async def retried(attempt: Callable[[], Awaitable[T]],
                  retry_on: type[BaseException] | tuple[type[BaseException], ...],
                  what: str, longest: float = 5.0,
                  on_retry: Callable[[], None] | None = None) -> T:
    """``await attempt()`` until it does not raise ``retry_on``, waiting 0.5 s, 1 s, 2 s...
    up to ``longest`` between tries (``on_retry()`` at each, e.g. a counter): for reads of
    records that exist, which must not be skipped (a dead letter or an empty answer would
    lose them), and for batches held while a store does not answer."""
    delay = 0.5
    while True:
        try:
            return await attempt()
        except retry_on:
            if on_retry is not None:
                on_retry()
            log.warning("%s failed; retrying in %.1fs", what, delay, exc_info=True)
            await asyncio.sleep(delay)
            delay = min(2 * delay, longest)


@contextlib.contextmanager
def as_current_event(event: Any) -> Iterator[None]:
    """Handle ``event``, a record fetched outside Faust's stream, as the stream's current
    event: a table write asks the current event for its changelog partition, and refuses
    ("Cannot modify table key from outside of stream iteration") without one."""
    from faust.streams import _current_event

    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


@dataclass(frozen=True)
class RecoveredMessage:
    """The parts of a Faust message the agents read, for a record fetched directly."""

    topic: str
    partition: int
    offset: int
    timestamp: float


@dataclass(frozen=True)
class RecoveredEvent:
    key: bytes | None
    value: bytes
    message: RecoveredMessage


class GapFiller:
    """Finds records Faust's stream skipped and fetches them, so a reader can handle them.

    **Skipped records after a start or a rebalance.** While its flow is suspended (table
    recovery, rebalancing), Faust's consumer abandons the delivery of a fetched record but
    still advances its read offset (its ``Consumer._drain_messages``; issues 216 and 596
    describe the family). The record is never processed (seen here: up to hundreds of
    records per partition in the first seconds after a restart,
    tests/integration/test_recovery.py). Faust's commit of such a partition can then stay
    before the hole for the rest of the run (a known gap, see docs/worker.md).

    A hole shows in one of two ways. A later record of the partition comes: the reader
    asks :meth:`missed_before` for it and handles what it returns first. Or none comes,
    because the hole was the end of a burst: only Faust's read position, past what the
    reader handled while the reader sits idle, shows it; a timer asks
    :meth:`missed_at_end` (the likeliest reason why, in CI, the learner's kill -9 test once
    waited in vain for the last labels). A reader marks each record it handled
    (:meth:`done`) and skips one it handled already (:meth:`handled`), so a record Faust
    was merely slow to deliver is handled once.

    Each reader (an agent) keeps its own positions, even on a topic another one reads.

    >>> import asyncio
    >>> from types import SimpleNamespace as NS
    >>> def read(settings, topic, partition, start, end):
    ...     return [NS(topic=topic, partition=partition, offset=o, key=None, value=b"",
    ...                timestamp=0.0) for o in range(start, end)]
    >>> gaps = GapFiller(app=None, settings=None, read=read, ends=lambda *a: (0, 12),
    ...                  committed=lambda *a: None)
    >>> gaps.done("learn", NS(topic="t", partition=0, offset=4))
    >>> late = NS(message=NS(topic="t", partition=0, offset=8))
    >>> [r.message.offset for r in asyncio.run(gaps.missed_before("learn", late))]
    [5, 6, 7]
    >>> gaps.done("learn", late.message)
    >>> asyncio.run(gaps.missed_at_end("learn", "t", 0, quiet=0))  # 9 read, not handled: wait
    []
    >>> [r.message.offset for r in asyncio.run(gaps.missed_at_end("learn", "t", 0, quiet=0))]
    [9, 10, 11]
    """

    CHUNK = 5000  # records fetched at a time at a partition's end
    RETRY_SECONDS = 5.0  # the longest wait between two attempts at a hole

    def __init__(self, app: faust.App, settings: Any, read: Callable = read_range,
                 ends: Callable = watermarks, committed: Callable = committed_offset) -> None:
        self.app = app
        self.settings = settings
        self._read = read
        self._ends = ends
        self._committed_at_broker = committed
        # (reader, topic, partition) -> the newest offset handled.
        self._last: dict[tuple[str, str, int], int] = {}
        # reader -> when it last handled a record, of any partition.
        self._busy_at: dict[str, float] = {}
        # (reader, topic, partition) -> the next offset to handle, already read by Faust
        # at the previous call of missed_at_end.
        self._suspect: dict[tuple[str, str, int], int] = {}

    def forget(self, partitions: Any) -> None:
        """A revoked partition's next offset is not ours to expect."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in [k for k in {**self._last, **self._suspect} if k[1:] in gone]:
            self._last.pop(key, None)
            self._suspect.pop(key, None)

    def handled(self, reader: str, msg: Any) -> bool:
        """Whether ``reader`` handled this record already (as a hole it fetched)."""
        last = self._last.get((reader, msg.topic, msg.partition))
        return last is not None and msg.offset <= last

    def done(self, reader: str, msg: Any) -> None:
        key = (reader, msg.topic, msg.partition)
        self._last[key] = max(msg.offset, self._last.get(key, msg.offset))
        self._busy_at[reader] = time.monotonic()

    async def missed_before(self, reader: str, event: Any) -> list[RecoveredEvent]:
        """The records between the last one ``reader`` handled on the event's partition and
        the event. A failed read is retried until it succeeds: the event waits, rather than
        the hole being lost."""
        msg = event.message

        async def attempt() -> list[RecoveredEvent]:
            start = await self._next(reader, msg.topic, msg.partition)
            if msg.offset <= start:
                return []
            records = await self._fetch(msg.topic, msg.partition, start, msg.offset)
            log.warning("%s: recovered %d record(s) Faust skipped on %s[%d] between %d and %d",
                        reader, len(records), msg.topic, msg.partition, start, msg.offset)
            return records

        return await retried(attempt, Exception, f"{reader}: fetching the records Faust "
                             f"skipped on {msg.topic}[{msg.partition}] before {msg.offset}",
                             longest=self.RETRY_SECONDS)

    async def missed_at_end(self, reader: str, topic: str, partition: int,
                            quiet: float) -> list[RecoveredEvent]:
        """The records at the partition's end that ``reader`` has not handled though Faust
        read past them at the previous call, if the reader handled nothing for ``quiet``
        seconds since (an idle reader has nothing queued, so they were dropped); up to
        :attr:`CHUNK` of them. Call it every ``quiet`` seconds. A failed read raises, and
        the caller asks again later.

        Faust may read a batch a moment before the idle reader gets its first record: a
        record read past only counts as dropped when it is still unhandled a call later.
        """
        key = (reader, topic, partition)
        idle = time.monotonic() - self._busy_at.setdefault(reader, time.monotonic()) >= quiet
        read = self._book("_read_offset", topic, partition, missing=float("inf"))
        # Only an idle reader's position is worth asking for (the broker, at worst).
        start = await self._next(reader, topic, partition) if idle and read is not None \
            else None
        if start is None or read < start:
            self._suspect.pop(key, None)  # busy, or Faust has not read that far yet
            return []
        if self._suspect.get(key) != start:
            self._suspect[key] = start  # dropped, if still unhandled at the next call
            return []
        _, end = await asyncio.to_thread(self._ends, self.settings, topic, partition)
        if end <= start:
            return []
        records = await self._fetch(topic, partition, start, min(end, start + self.CHUNK))
        log.warning("%s: %d record(s) of %s[%d] from %d were read by Faust but not delivered",
                    reader, len(records), topic, partition, start)
        return records

    def next_offset(self, reader: str, topic: str, partition: int) -> int | None:
        """The next offset ``reader`` will handle on a partition: after the last one it
        handled, or the committed one before it handled any."""
        last = self._last.get((reader, topic, partition))
        if last is not None:
            return last + 1
        return self._book("_committed_offset", topic, partition, missing=None)

    async def _next(self, reader: str, topic: str, partition: int) -> int:
        found = self.next_offset(reader, topic, partition)
        if found is not None and found >= 0:
            return found
        # Faust's bookkeeping is empty until its seek after the recovery, yet it may
        # deliver a record before that (and says None for a commit of 0): ask the broker.
        # Before this reader's first record is handled, the group's commit cannot have
        # moved past a hole in front of it.
        found = await asyncio.to_thread(self._committed_at_broker, self.settings,
                                        self.settings.app_id, topic, partition)
        if found is None:
            # Nothing committed: Faust started at the partition's first record
            # (auto_offset_reset="earliest").
            found, _ = await asyncio.to_thread(self._ends, self.settings, topic, partition)
        # Kept as the reader's reference: Faust delivers nothing before it. (The reader may
        # have handled records while the broker answered: those count.)
        return self._last.setdefault((reader, topic, partition), found - 1) + 1

    async def _fetch(self, topic: str, partition: int, start: int, end: int
                     ) -> list[RecoveredEvent]:
        records = await asyncio.to_thread(self._read, self.settings, topic, partition, start,
                                          end)
        return [RecoveredEvent(r.key, r.value, RecoveredMessage(r.topic, r.partition, r.offset,
                                                                r.timestamp))
                for r in records]

    def _book(self, name: str, topic: str, partition: int, missing: Any) -> Any:
        """An entry of the Faust consumer's bookkeeping for a partition: ``_committed_offset``
        (None for a commit of 0, and before its seek) or ``_read_offset`` (the newest offset
        it read, delivered or dropped; right after its seek, the committed one, not read
        yet). ``missing`` for a consumer without that bookkeeping."""
        from faust.types import TP

        try:
            return getattr(self.app.consumer, name).get(TP(topic, partition))
        except AttributeError:
            return missing


CLEAN_SHUTDOWN = ".clean-shutdown"


def discard_state_after_crash(state_dir: Path) -> bool:
    """Delete the worker's local table state unless its last run shut down cleanly.

    **Local RocksDB state after a kill -9.** Faust records, in each table's RocksDB, the
    changelog offset its data reflects, and after a restart it reads the changelog only
    from there. After a kill -9 that offset was found ahead of the data: a pending-join
    entry written before the kill was missing while the offset claimed it, so its label
    never met its snapshot (tests/integration/test_learner_recovery.py, 1 in 3000). As Kafka
    Streams does under exactly-once, a crashed instance rebuilds its state from the
    changelogs, which are the source of truth; a clean stop keeps it. Returns whether
    state was discarded.
    """
    marker = state_dir / CLEAN_SHUTDOWN
    crashed = state_dir.exists() and not marker.exists()
    if crashed:
        log.warning("the last worker run did not stop cleanly: rebuilding %s from the "
                    "changelogs", state_dir)
        shutil.rmtree(state_dir)
    marker.unlink(missing_ok=True)
    return crashed


def mark_clean_shutdown(state_dir: Path) -> None:
    if state_dir.exists():
        (state_dir / CLEAN_SHUTDOWN).touch()
