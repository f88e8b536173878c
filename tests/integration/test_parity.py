"""Training-serving parity and event-time lateness, against the real broker and Redis."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from driftline.tools.replay import replay
from monitoring.logs import entity_ref
from streams.catalog.fraud import FRAUD
from streams.engine import FeatureEngine, LateEvent
from streams.generators.base import disorder
from streams.generators.fraud import FraudGenerator, FraudStreamConfig
from tests.integration.conftest import read_all, send, wait_for

pytestmark = pytest.mark.integration

N = 1500


def test_replayed_features_equal_the_served_ones_on_a_disordered_stream(
        settings, topics, worker, worker_metrics, logs):
    run_id = uuid.uuid4().hex[:8]
    config = FraudStreamConfig(events=N, cards=150, seed=5, run_id=run_id, card_prefix=run_id,
                               start_time=time.time() - N / 2.0)
    # A tenth of the events held back by up to twice the allowed lateness.
    stream = disorder(FraudGenerator(config).emissions(), 0.1, 2 * FRAUD.allowed_lateness, 3)
    events = [e.record for e in stream if e.kind == "event"]

    engine, states, late, reordered, newest = FeatureEngine(FRAUD), {}, set(), 0, {}
    for t in events:
        if t.ts < newest.get(t.card_id, 0.0):
            reordered += 1
        newest[t.card_id] = max(newest.get(t.card_id, 0.0), t.ts)
        try:
            states[t.card_id], _ = engine.observe(states.get(t.card_id), t)
        except LateEvent:
            late.add(t.event_id)
    assert late and reordered > len(late)  # some applied out of order, some too late

    m0 = worker_metrics()
    before = {name: m0.value(name, pipeline="fraud") for name in
              ("driftline_labels_learned_total", "driftline_late_events_total")}
    send(settings, topics.events, [(e.key, e.record.to_json()) for e in stream
                                   if e.kind == "event"])
    send(settings, topics.labels, [(e.key, e.record.to_json()) for e in stream
                                   if e.kind == "label"])

    def delta(name: str) -> float:
        return worker_metrics().value(name, pipeline="fraud") - before[name]

    wait_for(lambda: delta("driftline_labels_learned_total") >= N - len(late), 180,
             "every label of an accepted event learned")
    assert delta("driftline_late_events_total") == len(late)

    report = replay(settings, "fraud")
    assert report.ok, "\n".join(report.lines())
    assert report.compared >= N - len(late)

    letters = [d for d in read_all(settings, topics.deadletter)
               if d["error"].startswith("ts: late:")]
    assert {d["key"] for d in letters} >= {t.card_id for t in events if t.event_id in late}
    assert all("behind the entity's newest event" in d["error"] for d in letters)

    # The worker's log says which event each of them was, as JSON lines.
    lines = [json.loads(line) for line in (logs / "worker.log").read_text().splitlines()
             if line.startswith("{")]
    dead = [x for x in lines if x["message"].startswith("dead-lettered")
            and x.get("event_id") in late]
    assert {x["event_id"] for x in dead} == late
    cards = {t.event_id: t.card_id for t in events}
    assert all(x["pipeline"] == "fraud" and x["level"] == "WARNING"
               and x["topic"] == topics.events and isinstance(x["offset"], int)
               # the card as a keyed hash, never the card id (erasure cannot reach logs)
               and x["entity"] == entity_ref(cards[x["event_id"]])
               and cards[x["event_id"]] not in json.dumps(x) for x in dead)
