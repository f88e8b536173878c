"""Choosing dead letters: by reason and time, and what a replay leaves alone."""

from __future__ import annotations

from datetime import datetime

import pytest

from driftline.tools.deadletters import (
    Ledger,
    ReplayMark,
    Selection,
    Source,
    parse_since,
    plan_replay,
)
from streams.schemas import DeadLetter

NOW = 1_700_000_000.0
INPUTS = {"fraud.events", "fraud.labels"}


def letter(offset: int, error: str = "amount: Input should be a valid number",
           at: float = NOW, topic: str = "fraud.events", value: str = "{}") -> DeadLetter:
    return DeadLetter(source_topic=topic, partition=0, offset=offset, key=f"k{offset}",
                      value=value, error=error, fields=[error.split(":")[0]], at=at)


def sent(of: DeadLetter, copy_offset: int | None, state: str = "sent") -> ReplayMark:
    return ReplayMark(source_topic=of.source_topic, partition=of.partition,
                      offset=of.offset, state=state, after=copy_offset or 0, stamp_ms=1,
                      copy_offset=copy_offset, at=NOW)


LETTERS = [letter(0, at=NOW - 7200),
           letter(1, "ts: late: 312.500s behind the entity's newest event", at=NOW - 300),
           letter(2, "is_fraud: Input should be a valid boolean", at=NOW - 30,
                  topic="fraud.labels")]


@pytest.mark.parametrize(("reason", "since", "offsets"), [
    (None, None, [0, 1, 2]),
    ("valid number", None, [0]),             # a substring is a regular expression too
    ("VALID (number|boolean)", None, [0, 2]),  # any case
    (r"^ts:", None, [1]),
    (None, "1h", [1, 2]),                    # a span back from now
    (None, "5m", [1, 2]),                    # at or after: 300 s back counts
    (None, "4m", [2]),
    (None, str(NOW - 60), [2]),              # epoch seconds
    (None, "2023-11-14T21:00:00+00:00", [1, 2]),  # ISO, with its zone
    ("valid", "10m", [2]),                   # both
])
def test_a_selection_keeps_the_letters_of_its_reason_and_time(reason, since, offsets):
    selection = Selection.parse(reason, since, now=NOW)
    assert [x.offset for x in LETTERS if selection.matches(x)] == offsets


def test_an_iso_time_without_a_zone_is_local_time():
    local = datetime(2023, 11, 14, 12, 0, 0)
    assert parse_since("2023-11-14T12:00:00", now=NOW) == local.astimezone().timestamp()
    assert parse_since("2023-11-14T12:00:00Z", now=NOW) == 1_699_963_200.0


@pytest.mark.parametrize(("reason", "since", "message"), [
    ("valid (number", None, "--reason 'valid (number'"),
    (None, "last week", "--since 'last week'"),
    (None, "10y", "--since '10y'"),
])
def test_a_selection_it_cannot_read_is_named(reason, since, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Selection.parse(reason, since, now=NOW)


def test_a_replay_sends_each_selected_letter_once_and_says_why_not_the_others():
    new, replayed, internal = letter(0), letter(1), letter(2, topic="fraud.join")
    copy_of_replayed = letter(9)       # the worker refused the replayed copy (offset 9)
    interrupted = letter(3)            # a replay stopped before its copy was found
    altered = letter(4, value="{\"card\": \"\ufffd\"}")  # not UTF-8 when it came
    ledger = Ledger({Source.of(replayed): sent(replayed, 9),
                     Source.of(interrupted): sent(interrupted, None, "sending")})
    letters = [new, replayed, internal, copy_of_replayed, interrupted, altered]

    plan = plan_replay(letters, ledger, Selection(), INPUTS)
    assert plan.send == [new, interrupted]
    assert dict(plan.skipped) == {
        "replayed already": 1,
        "from fraud.join (internal; --internal sends it)": 1,
        "refailed (a replay's copy; --refailed sends it)": 1,
        "not UTF-8 (the letter holds it altered)": 1}
    assert [ledger.status(x) for x in letters] == [
        "new", "replayed", "new", "refailed", "interrupted", "new"]

    everything = plan_replay(letters, ledger, Selection(), INPUTS, internal=True,
                             refailed=True)
    assert everything.send == [new, internal, copy_of_replayed, interrupted]
    unselected = plan_replay(letters, ledger, Selection.parse("boolean"), INPUTS)
    assert unselected.send == [] and not unselected.skipped  # only the chosen are counted
