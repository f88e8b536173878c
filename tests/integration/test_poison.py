"""No single event poisons the model or silences a card (issue 14, cases 1 and 2), and a
model poisoned anyway is never served: the learner rolls back and refuses the example.

Against the session's worker: events and labels through Kafka, the model's scores read
from the predictions topic.
"""

from __future__ import annotations

import json
import math
import time
import uuid

import pytest

from streams.schemas import TrainingExample
from tests.integration.conftest import read_all, send, wait_for

pytestmark = pytest.mark.integration


def _event(event_id: str, card: str, amount: float, ts: float) -> bytes:
    return json.dumps({"event_id": event_id, "card_id": card, "merchant_id": "m-1",
                       "amount": amount, "ts": ts}).encode()


def _label(event_id: str, fraud: bool, ts: float) -> bytes:
    return json.dumps({"event_id": event_id, "is_fraud": fraud, "ts": ts}).encode()


def _ordinary(run: str, n: int, start: float) -> list[tuple[str, str, bytes]]:
    """``n`` ordinary payments of 10 cards: (event id, card, value)."""
    out = []
    for i in range(n):
        card = f"card-{run}-{i % 10}"
        out.append((f"ok-{run}-{i}", card, _event(f"ok-{run}-{i}", card, 20.0 + i % 37,
                                                 start + i * 0.1)))
    return out


def _learned(worker_metrics) -> float:
    return worker_metrics().value("driftline_labels_learned_total", pipeline="fraud")


def _scores(settings, topics, ids: set[str]) -> dict[str, float]:
    return {p["event_id"]: p["score"] for p in read_all(settings, topics.predictions)
            if p["event_id"] in ids}


def _dead_letters(settings, topics, needle: str) -> list[dict]:
    return [d for d in read_all(settings, topics.deadletter) if needle in d["value"]]


def test_a_tiny_amount_then_an_ordinary_one_leaves_every_score_finite(
        settings, topics, worker, worker_metrics):
    run, now = uuid.uuid4().hex[:8], time.time()
    card = f"tiny-{run}"
    # The 1e-300 mean made the next payment's amount_to_mean 5e301; learned, it turned
    # every score of every card NaN.
    poison = [(f"tiny-{run}-0", _event(f"tiny-{run}-0", card, 1e-300, now - 120)),
              (f"tiny-{run}-1", _event(f"tiny-{run}-1", card, 50.0, now - 110))]
    before = _ordinary(run, 200, now - 100)
    learned = _learned(worker_metrics)
    send(settings, topics.events, [(card, v) for _, v in poison]
         + [(c, v) for _, c, v in before])
    send(settings, topics.labels, [(i, _label(i, n % 2 == 0, now)) for n, (i, _) in
                                   enumerate(poison)]
         + [(i, _label(i, n % 5 == 0, now)) for n, (i, _, _) in enumerate(before)])
    wait_for(lambda: _learned(worker_metrics) >= learned + 202, 120, "the labels learned")
    time.sleep(2.0)  # the model that learned them published (every second at most)

    after = _ordinary(f"{run}b", 30, now - 50)
    send(settings, topics.events, [(c, v) for _, c, v in after])
    ids = {i for i, _, _ in after} | {i for i, _ in poison}
    wait_for(lambda: len(_scores(settings, topics, ids)) == len(ids), 60, "the scores")
    scores = _scores(settings, topics, ids)
    assert all(math.isfinite(s) for s in scores.values()), scores


def test_an_event_from_the_future_is_dead_lettered_and_the_card_goes_on(
        settings, topics, worker):
    run, now = uuid.uuid4().hex[:8], time.time()
    card = f"future-{run}"
    in_ms = _event(f"ms-{run}", card, 12.0, now * 1000)  # a timestamp in milliseconds
    later = [(f"real-{run}-{i}", _event(f"real-{run}-{i}", card, 12.0, now - 30 + i))
             for i in range(3)]
    send(settings, topics.events, [(card, in_ms)] + [(card, v) for _, v in later])
    ids = {i for i, _ in later}
    wait_for(lambda: len(_scores(settings, topics, ids)) == 3, 60, "the later events scored")
    letters = _dead_letters(settings, topics, f"ms-{run}")
    assert len(letters) == 1
    assert letters[0]["fields"] == ["ts"] and "ahead of the wall clock" in letters[0]["error"]
    assert not _dead_letters(settings, topics, f"real-{run}")
    assert not _scores(settings, topics, {f"ms-{run}"})


def test_a_poisoned_model_is_not_served_and_the_example_is_refused(
        settings, topics, worker, worker_metrics):
    """An example the guards upstream let through (written to the training log directly)
    makes the model non-finite: it is not published, the learner goes back to its
    checkpoint, learns carefully, and dead-letters that example alone."""
    run, now = uuid.uuid4().hex[:8], time.time()
    ordinary = _ordinary(run, 50, now - 100)
    learned = _learned(worker_metrics)
    send(settings, topics.events, [(c, v) for _, c, v in ordinary])
    send(settings, topics.labels, [(i, _label(i, n % 5 == 0, now))
                                   for n, (i, _, _) in enumerate(ordinary)])
    wait_for(lambda: _learned(worker_metrics) >= learned + 50, 120, "the labels learned")
    time.sleep(2 * settings.checkpoint_seconds)  # a checkpoint after them

    unhealthy = worker_metrics().value("driftline_model_unhealthy_total", pipeline="fraud")
    poisoned = TrainingExample(
        event_id=f"poisoned-{run}", entity="x", event_time=now, features={"amount": 1e300},
        score=0.5, model_version="v0.1", label=True, label_time=now)
    send(settings, topics.training, [(poisoned.event_id, poisoned.to_json())])
    wait_for(lambda: _dead_letters(settings, topics, f"poisoned-{run}"), 60,
             "the poisoned example dead-lettered")
    assert worker_metrics().value("driftline_model_unhealthy_total",
                                  pipeline="fraud") == unhealthy + 1
    control = [c for c in read_all(settings, topics.control)
               if c["kind"] == "model_unhealthy" and c["at"] >= now]
    assert control
    letter = _dead_letters(settings, topics, f"poisoned-{run}")[0]
    assert "non-finite" in letter["error"]

    # The model serves finite scores again.
    after = _ordinary(f"{run}b", 10, now - 40)
    send(settings, topics.events, [(c, v) for _, c, v in after])
    ids = {i for i, _, _ in after}
    wait_for(lambda: len(_scores(settings, topics, ids)) == len(ids), 60, "the scores")
    assert all(math.isfinite(s) for s in _scores(settings, topics, ids).values())
