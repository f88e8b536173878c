"""Workarounds for faust-streaming (0.15.3) defects that break at-least-once; each names
the test that caught it. Remove them when Faust is fixed and the test still passes.

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
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust

log = logging.getLogger(__name__)


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
    """Finds records Faust's stream skipped and fetches them, so an agent can process them.

    **Skipped records after a start or a rebalance.** While its flow is suspended (table
    recovery, rebalancing), Faust's consumer abandons the delivery of a fetched record but
    still advances its read offset, and records the hole as a "gap" that it commits past
    (its ``Consumer._drain_messages``; issues 216 and 596 describe the family). The record
    is never processed (seen here: 1 to 3 records per partition in the first second after
    a restart, tests/integration/test_recovery.py). An agent asks :meth:`missed_before`
    for each event and processes what it returns first; the engine's duplicate check and
    the learner's make a record that Faust did deliver after all harmless.
    """

    def __init__(self, app: faust.App, settings: Any) -> None:
        self.app = app
        self.settings = settings
        self._last: dict[tuple[str, int], int] = {}

    def forget(self, partitions: Any) -> None:
        """A revoked partition's next offset is not ours to expect."""
        for tp in partitions:
            self._last.pop((tp.topic, tp.partition), None)

    async def missed_before(self, event: Any) -> list[RecoveredEvent]:
        msg = event.message
        key = (msg.topic, msg.partition)
        last = self._last.get(key)
        if last is None:
            committed = self._committed(msg.topic, msg.partition)
            start = committed if committed is not None and committed >= 0 else None
        else:
            start = last + 1
        self._last[key] = max(msg.offset, last if last is not None else msg.offset)
        if start is None or msg.offset <= start:
            return []
        from driftline.topic_reader import read_range

        records = await asyncio.to_thread(read_range, self.settings, msg.topic, msg.partition,
                                          start, msg.offset)
        log.warning("recovered %d record(s) Faust skipped on %s[%d] between %d and %d",
                    len(records), msg.topic, msg.partition, start, msg.offset)
        return [RecoveredEvent(r.key, r.value, RecoveredMessage(r.topic, r.partition, r.offset,
                                                                r.timestamp))
                for r in records]

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The next offset to process on a partition: after the last one an agent saw, or
        the committed one before it saw any."""
        last = self._last.get((topic, partition))
        return last + 1 if last is not None else self._committed(topic, partition)

    def _committed(self, topic: str, partition: int) -> int | None:
        from faust.types import TP

        try:
            return self.app.consumer._committed_offset.get(TP(topic, partition))
        except AttributeError:  # a consumer without that bookkeeping: nothing to compare
            return None


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
