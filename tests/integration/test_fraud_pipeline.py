"""The fraud slice end to end, against the real broker and Redis."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis

from driftline.adapters.stores import RedisKeys
from streams.catalog.fraud import FRAUD, Transaction
from streams.engine import FeatureEngine
from streams.generators.fraud import FraudGenerator, FraudStreamConfig, probe_cases
from tests.integration.conftest import call, read_all, redis_features, send, wait_for

pytestmark = pytest.mark.integration

N_EVENTS = 3000
MALFORMED = [
    lambda good: json.dumps({**good, "amount": "a lot"}).encode(),      # wrong type
    lambda good: json.dumps({k: v for k, v in good.items() if k != "card_id"}).encode(),
    lambda good: b"{this is not json",
    lambda good: json.dumps({**good, "ts": None}).encode(),
]


@pytest.fixture(scope="module")
def run(settings, topics, worker, worker_metrics):
    """Stream N transactions and their labels, with malformed records in between, and wait
    until every label has been learned."""
    run_id = uuid.uuid4().hex[:8]
    emissions = list(FraudGenerator(FraudStreamConfig(
        events=N_EVENTS, seed=21, run_id=run_id, card_prefix=f"card-{run_id}",
        start_time=time.time() - N_EVENTS / 2.0,
    )).emissions())
    events = [e.record for e in emissions if e.kind == "event"]
    malformed, records, neighbours = [], [], []
    n_good = 0
    for e in emissions:
        if e.kind == "event":
            records.append((topics.events, e.key, e.record.to_json()))
            n_good += 1
            if n_good % 300 == 0:
                bad = MALFORMED[len(malformed) % len(MALFORMED)](e.record.model_dump())
                records.append((topics.events, e.key, bad))
                malformed.append(bad)
                neighbours.append(e.record.event_id)
        else:
            records.append((topics.labels, e.key, e.record.to_json()))
    bad_labels = [b'{"event_id": "x", "is_fraud": "maybe", "ts": 1.0}', b"\x00\x01"]
    for topic in (topics.events, topics.labels):
        send(settings, topic, [(k, v) for t, k, v in records if t == topic])
    send(settings, topics.labels, [(None, b) for b in bad_labels])

    def learned() -> float:
        return worker_metrics().value("driftline_labels_learned_total", pipeline="fraud")

    wait_for(lambda: learned() >= N_EVENTS, 240, f"{N_EVENTS} labels learned")
    return {"events": events, "malformed": malformed, "bad_labels": bad_labels,
            "neighbours": neighbours, "run_id": run_id}


def recompute(events: list[Transaction]):
    """Features of every event and the final features per card, by the same pure code."""
    engine = FeatureEngine(FRAUD)
    states, per_event, latest = {}, {}, {}
    for t in events:  # production order is each card's partition order
        states[t.card_id], f = engine.observe(states.get(t.card_id), t)
        per_event[t.event_id] = f
        latest[t.card_id] = f
    return per_event, latest


def test_features_in_redis_equal_a_recomputation_from_the_same_events(settings, run):
    _, latest = recompute(run["events"])
    stored = redis_features(settings, "fraud", latest)
    for card, expected in latest.items():
        assert stored[card] == expected, card


def test_the_model_learned_exactly_one_update_per_label(settings, topics, run, worker_metrics,
                                                        api):
    time.sleep(3)  # anything extra would have been learned by now
    m = worker_metrics()
    assert m.value("driftline_labels_learned_total", pipeline="fraud") == N_EVENTS
    assert m.value("driftline_label_duplicates_total", pipeline="fraud") == 0
    examples = read_all(settings, topics.training)
    assert len(examples) == N_EVENTS
    assert len({e["event_id"] for e in examples}) == N_EVENTS
    r = redis.Redis.from_url(settings.redis_url)
    learner = r.hgetall(RedisKeys(settings.redis_prefix, "fraud").learner)
    assert int(learner[b"updates"]) == N_EVENTS
    assert learner[b"version"].decode() == f"v0.{N_EVENTS}"
    # Prequential metrics of the version that served the scores, as the API reports them.
    code, status = call(f"http://{settings.api_host}:{settings.api_port}/v1/models/fraud")
    assert code == 200, status
    v0 = status["prequential"]["v0"]
    assert set(v0) == {"roc_auc", "log_loss", "accuracy", "labels"}
    assert v0["labels"] == N_EVENTS
    assert 0 < v0["log_loss"] < 5 and 0 <= v0["accuracy"] <= 1
    assert status["learner"]["updates"] == str(N_EVENTS)


def test_each_example_carries_the_features_its_event_was_scored_with(settings, topics, run):
    per_event, _ = recompute(run["events"])
    labels = {t.event_id for t in run["events"]}
    for ex in read_all(settings, topics.training):
        assert ex["event_id"] in labels
        assert ex["features"] == per_event[ex["event_id"]], ex["event_id"]
        # Predict, then learn: the score was made before the label was known.
        assert ex["label_time"] > ex["event_time"]


def test_redelivered_examples_are_not_learned_twice(settings, topics, run, worker_metrics):
    examples = read_all(settings, topics.training)[:25]
    send(settings, topics.training, [(e["event_id"], json.dumps(e).encode()) for e in examples])

    def duplicates() -> float:
        return worker_metrics().value("driftline_label_duplicates_total", pipeline="fraud")

    wait_for(lambda: duplicates() == 25, 30, "25 duplicates counted")
    assert worker_metrics().value("driftline_labels_learned_total", pipeline="fraud") == N_EVENTS


def test_malformed_records_are_dead_lettered_and_the_good_ones_around_them_processed(
        settings, topics, run, worker_metrics):
    wait_for(lambda: worker_metrics().value("driftline_deadletters_total", pipeline="fraud")
             >= len(run["malformed"]) + len(run["bad_labels"]), 60, "dead letters")
    letters = read_all(settings, topics.deadletter)
    from_events = [d for d in letters if d["source_topic"] == topics.events]
    assert sorted(d["value"].encode() for d in from_events) == sorted(run["malformed"])
    reasons = " | ".join(d["error"] for d in from_events)
    for expected in ("amount: Input should be a valid number", "card_id: Field required",
                     "$: not valid JSON", "ts: Input should be a valid number"):
        assert expected in reasons
    assert all(d["fields"] for d in from_events)
    from_labels = [d for d in letters if d["source_topic"] == topics.labels]
    assert {d["fields"][0] for d in from_labels} == {"is_fraud", "$"}
    predicted = {p["event_id"] for p in read_all(settings, topics.predictions)}
    assert {t.event_id for t in run["events"]} <= predicted
    assert set(run["neighbours"]) <= predicted
    m = worker_metrics()
    assert m.value("driftline_events_total", pipeline="fraud", kind="event", outcome="ok") \
        == N_EVENTS


def test_consumer_lag_is_reported_per_partition_and_drains(settings, topics, run,
                                                          worker_metrics):
    def lag_by_partition() -> dict[str, float]:
        return {labels["partition"]: v
                for labels, v in worker_metrics().get("driftline_consumer_lag", [])
                if labels["pipeline"] == "fraud" and labels["topic"] == topics.events}

    # Every partition of the events topic is reported, and nothing is left to process.
    wait_for(lambda: len(lag_by_partition()) == settings.partitions
             and sum(lag_by_partition().values()) == 0, 30, "the events topic's lag at 0")


def post(url: str, body: bytes | dict, expect: int):
    status, payload = call(url, body, method="POST")
    assert status == expect, payload
    return payload


def test_api_scores_card_testing_above_a_normal_purchase(settings, topics, run, api):
    cases = probe_cases(time.time(), run["run_id"])
    send(settings, topics.events,
         [(t.card_id, t.to_json()) for c in cases.values() for t in c.history])
    r = redis.Redis.from_url(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix, "fraud")
    burst = cases["card_testing"].history
    wait_for(lambda: r.hget(keys.features(burst[0].card_id), "count_1m") == b"8.0", 30,
             "the burst's features in Redis")
    wait_for(lambda: r.exists(keys.features(cases["normal"].probe.card_id)), 30,
             "the normal card's features in Redis")
    scores = {name: post(f"{api}/v1/score/fraud", c.probe.model_dump(), 200)
              for name, c in cases.items()}
    assert scores["card_testing"]["features"]["count_1m"] == 9.0
    assert scores["card_testing"]["entity_known"] and scores["normal"]["entity_known"]
    assert scores["card_testing"]["model_version"].startswith("v0.")
    assert scores["card_testing"]["probability"] > scores["normal"]["probability"]


def test_api_rejects_bad_input_with_a_json_4xx(settings, api):
    good = {"event_id": "e", "card_id": "c", "merchant_id": "m", "amount": 3.0, "ts": 1.7e9}
    body = post(f"{api}/v1/score/fraud", {**good, "amount": "3"}, 422)
    assert body["fields"] == {"amount": "Input should be a valid number"}
    body = post(f"{api}/v1/score/fraud", {k: v for k, v in good.items() if k != "ts"}, 422)
    assert "ts" in body["fields"]
    assert "$" in post(f"{api}/v1/score/fraud", b"{oops", 422)["fields"]
    assert post(f"{api}/v1/score/nope", good, 404)["fields"] == {"pipeline": "not declared"}
    too_big = post(f"{api}/v1/score/fraud", b"x" * (settings.api_max_body_bytes + 1), 413)
    assert too_big["fields"] == {"$": f"at most {settings.api_max_body_bytes} bytes"}
    with urllib.request.urlopen(f"{api}/healthz", timeout=5) as resp:
        assert json.loads(resp.read())["status"] == "ok"
    with urllib.request.urlopen(f"{api}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'driftline_http_requests_total{method="POST",route="/v1/score/{pipeline}",' \
           'status="422"}' in text
