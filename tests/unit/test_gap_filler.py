"""The logic of :class:`agents.faust_fixes.GapFiller`, over an in-memory partition.

The integration tests (test_recovery, test_learner_recovery) run it against Faust and
Kafka; these pin down each rule on its own."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace as NS

import pytest

from agents.faust_fixes import GapFiller


class Partition:
    """One partition ``t[0]`` holding offsets ``low..high-1``; ``failures`` reads fail."""

    def __init__(self, low: int, high: int, failures: int = 0) -> None:
        self.low, self.high, self.failures = low, high, failures
        self.reads: list[tuple[int, int]] = []

    def read(self, settings, topic, partition, start, end):
        self.reads.append((start, end))
        if self.failures:
            self.failures -= 1
            raise TimeoutError("Kafka did not answer")
        return [NS(topic=topic, partition=partition, offset=o, key=None, value=b"%d" % o,
                   timestamp=0.0) for o in range(max(start, self.low), min(end, self.high))]

    def ends(self, settings, topic, partition):
        return self.low, self.high


def filler(part: Partition, committed: int | None = None, at_broker: int | None = None,
           faust_read: int | None = 10**9) -> GapFiller:
    """``committed`` and ``faust_read`` are Faust's bookkeeping (the committed offset, the
    newest offset its consumer read), ``at_broker`` the group's commit."""
    from faust.types import TP

    app = NS(consumer=NS(_committed_offset={TP("t", 0): committed},
                         _read_offset={TP("t", 0): faust_read}))
    gaps = GapFiller(app, settings=NS(app_id="g"), read=part.read, ends=part.ends,
                     committed=lambda settings, group, topic, partition: at_broker)
    gaps.RETRY_SECONDS = 0.01
    return gaps


def event(offset: int) -> NS:
    return NS(message=NS(topic="t", partition=0, offset=offset))


def offsets(records) -> list[int]:
    return [r.message.offset for r in records]


def test_the_hole_before_the_first_record_is_measured_from_the_committed_offset():
    gaps = filler(Partition(0, 100), committed=40)
    assert offsets(asyncio.run(gaps.missed_before("join", event(43)))) == [40, 41, 42]


def test_before_faust_knows_the_committed_offset_the_broker_is_asked():
    # Faust fills its bookkeeping after its seek, and may deliver a record before that.
    gaps = filler(Partition(0, 100), committed=None, at_broker=40)
    assert offsets(asyncio.run(gaps.missed_before("join", event(43)))) == [40, 41, 42]


def test_without_a_committed_offset_the_hole_starts_at_the_partitions_first_record():
    # Faust starts at the first record then (auto_offset_reset="earliest").
    gaps = filler(Partition(5, 100), committed=None, at_broker=None)
    assert offsets(asyncio.run(gaps.missed_before("join", event(8)))) == [5, 6, 7]


def test_a_handled_record_moves_the_reference_and_is_not_handled_twice():
    gaps = filler(Partition(0, 100), committed=0)
    gaps.done("join", event(10).message)
    assert gaps.handled("join", event(10).message)
    assert gaps.handled("join", event(3).message)
    assert not gaps.handled("join", event(11).message)
    assert asyncio.run(gaps.missed_before("join", event(11))) == []
    assert offsets(asyncio.run(gaps.missed_before("join", event(14)))) == [11, 12, 13]


def test_readers_of_one_topic_keep_their_own_positions():
    gaps = filler(Partition(0, 100), committed=3)
    gaps.done("learn", event(10).message)
    assert not gaps.handled("embed", event(10).message)
    assert gaps.next_offset("learn", "t", 0) == 11
    assert gaps.next_offset("embed", "t", 0) == 3


def test_a_failed_read_is_retried_until_the_hole_is_read():
    part = Partition(0, 100, failures=2)
    gaps = filler(part, committed=20)
    assert offsets(asyncio.run(gaps.missed_before("join", event(22)))) == [20, 21]
    assert part.reads == [(20, 22)] * 3


def end(gaps: GapFiller, quiet: float = 0) -> list[int]:
    return offsets(asyncio.run(gaps.missed_at_end("label", "t", 0, quiet=quiet)))


def test_records_faust_read_past_and_an_idle_reader_never_handled_were_dropped():
    gaps = filler(Partition(0, 30), committed=0)
    gaps.done("label", event(26).message)
    assert end(gaps, quiet=60) == []  # the reader handled one just now
    assert end(gaps) == []  # read past: unhandled a call later, it was dropped
    assert end(gaps) == [27, 28, 29]
    gaps.done("label", event(29).message)
    assert end(gaps) == [] and end(gaps) == []


def test_a_batch_read_just_before_an_idle_reader_gets_it_is_not_a_hole():
    gaps = filler(Partition(0, 30), committed=0)
    gaps.done("label", event(26).message)
    assert end(gaps) == []  # Faust read 27..29 a moment ago
    gaps.done("label", event(27).message)  # and the reader got them
    assert end(gaps) == []
    gaps.done("label", event(29).message)
    assert end(gaps) == []


def test_a_reader_busy_on_another_partition_still_has_records_queued():
    gaps = filler(Partition(0, 30), committed=0)
    gaps.done("label", event(26).message)
    assert end(gaps) == []
    gaps.done("label", NS(topic="t", partition=1, offset=3))
    assert end(gaps, quiet=60) == []
    assert end(gaps) == []  # the suspicion started over


def test_records_faust_has_not_read_yet_are_left_to_faust():
    gaps = filler(Partition(0, 30), committed=0, faust_read=26)
    gaps.done("label", event(26).message)
    assert end(gaps) == [] and end(gaps) == []


def test_a_partition_that_never_delivered_is_read_from_its_committed_offset():
    gaps = filler(Partition(0, 12), committed=9)
    assert end(gaps, quiet=60) == []  # starts the clock
    assert end(gaps) == []
    assert end(gaps) == [9, 10, 11]


def test_the_end_is_read_a_chunk_at_a_time_and_a_failure_raises_for_the_next_round():
    part = Partition(0, 12_000, failures=1)
    gaps = filler(part, committed=0)
    gaps.done("label", event(99).message)
    assert end(gaps) == []
    with pytest.raises(TimeoutError):
        end(gaps)
    assert end(gaps) == list(range(100, 100 + GapFiller.CHUNK))


def test_a_revoked_partition_forgets_every_readers_position():
    from faust.types import TP

    gaps = filler(Partition(0, 100), committed=50)
    gaps.done("learn", event(70).message)
    gaps.done("embed", event(60).message)
    gaps.forget([TP("t", 0)])
    assert gaps.next_offset("learn", "t", 0) == 50
    assert gaps.next_offset("embed", "t", 0) == 50


def test_a_record_fetched_outside_the_stream_writes_to_tables_on_its_own_partition():
    import faust

    from agents.faust_fixes import RecoveredEvent, RecoveredMessage, as_current_event

    app = faust.App("gap-filler-unit", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.Table("state", partitions=4, key_type=str, default=None)
    sent = []

    def send_changelog(partition, key, value, *args, **kwargs):  # no broker in a unit test
        sent.append((partition, key, value))
        return NS(message=NS(partition=partition))

    table.send_changelog = send_changelog
    with pytest.raises(TypeError, match="outside of stream iteration"):
        table["card"] = 1
    with as_current_event(RecoveredEvent(b"card", b"{}", RecoveredMessage("t", 2, 7, 0.0))):
        table["card"] = 1
    assert sent == [(2, "card", 1)]


def test_what_the_reader_handled_while_the_broker_answered_counts():
    gaps = filler(Partition(0, 100), committed=None)

    def broker_answers_late(settings, group, topic, partition):
        gaps.done("join", event(3).message)  # meanwhile, the stream brought 0..3
        return 0

    gaps._committed_at_broker = broker_answers_late
    assert offsets(asyncio.run(gaps.missed_before("join", event(6)))) == [4, 5]

