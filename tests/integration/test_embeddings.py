"""Vectors in Milvus (Milvus Lite, real), similar-case search and erasure, end to end."""

from __future__ import annotations

import time
import urllib.parse
import uuid
from collections import Counter

import pytest
import redis

from driftline.adapters.stores import RedisKeys
from driftline.adapters.vectors import collection_names, quoted
from streams.catalog.fraud import FRAUD, FRAUD_KNN, FraudLabel
from streams.generators.fraud import FraudGenerator, FraudStreamConfig, probe_cases
from streams.topics import PipelineTopics
from tests.integration.conftest import (
    call,
    milvus_rows,
    own_namespace,
    read_all,
    redis_features,
    send,
    wait_for,
)

pytestmark = pytest.mark.integration

N_EVENTS = 1500


# This module runs a worker and an API of its own, in a namespace of its own: its erasures
# change features on purpose, which the session's parity replay and absolute counts of
# the fraud topics must not see. (The names override the session fixtures here.)
PIPELINES_HERE = ["fraud", "fraud_knn"]
settings, logs, worker, api, worker_metrics = own_namespace("emb", PIPELINES_HERE)


@pytest.fixture(scope="module")
def topics(settings) -> PipelineTopics:
    return PipelineTopics.for_spec(FRAUD, settings.namespace)


@pytest.fixture(scope="module")
def run(settings, topics, worker, api, worker_metrics):
    """Stream N transactions with their labels and wait until every labeled event is a
    vector in Milvus."""
    run_id = uuid.uuid4().hex[:8]
    prefix = f"emb-{run_id}"
    emissions = list(FraudGenerator(FraudStreamConfig(
        events=N_EVENTS, seed=5, run_id=run_id, card_prefix=prefix, cards=200,
        start_time=time.time() - N_EVENTS / 2.0)).emissions())
    events = [e.record for e in emissions if e.kind == "event"]
    labels = {e.record.event_id: e.record.is_fraud for e in emissions if e.kind == "label"}
    # A card whose id needs quoting in Milvus filters, and is not ASCII.
    odd = f'{prefix}-odd "card" \\ café'
    extra = [e.model_copy(update={"card_id": odd, "event_id": f"{e.event_id}-odd"})
             for e in events[:3]]
    events += extra
    labels.update({e.event_id: False for e in extra})
    send(settings, topics.events, [(e.card_id, e.to_json()) for e in events])
    send(settings, topics.labels, [
        (e.event_id, FraudLabel(event_id=e.event_id, is_fraud=labels[e.event_id],
                                ts=e.ts + 600).to_json()) for e in events])
    events_c, entities_c = collection_names(settings, "fraud")
    flt = f"entity like {quoted(prefix + '%')}"

    def embedded() -> bool:
        try:
            return len(milvus_rows(settings, events_c, flt, ["id"])) >= len(labels)
        except Exception:  # noqa: BLE001 - the collection is made with the first batch
            return False

    wait_for(embedded, 240, f"{len(labels)} event vectors in Milvus", interval=2)

    def profiled() -> bool:  # profiles are written after the events of a batch
        rows = milvus_rows(settings, entities_c, f"id like {quoted(prefix + '%')}", ["events"])
        return sum(r["events"] for r in rows) >= len(labels)

    wait_for(profiled, 60, "every labeled event in a profile", interval=1)
    return {"prefix": prefix, "events": events, "labels": labels, "flt": flt,
            "collections": (events_c, entities_c)}


def test_every_labeled_event_is_one_vector_with_its_label(settings, run):
    events_c, _ = run["collections"]
    got = milvus_rows(settings, events_c, run["flt"],
                      ["id", "label", "entity", "event_time", "vector"])
    assert sorted(r["id"] for r in got) == sorted(run["labels"])
    by_id = {e.event_id: e for e in run["events"]}
    for r in got:
        assert bool(r["label"]) == run["labels"][r["id"]]
        assert r["entity"] == by_id[r["id"]].card_id
        assert r["event_time"] == by_id[r["id"]].ts
        assert len(r["vector"]) == len(FRAUD.feature_names)


def test_each_card_has_one_profile_counting_each_of_its_events_once(settings, run):
    _, entities_c = run["collections"]
    profiles = milvus_rows(settings, entities_c, f"id like {quoted(run['prefix'] + '%')}",
                    ["id", "events", "label", "updated"])
    per_card = Counter(e.card_id for e in run["events"] if e.event_id in run["labels"])
    assert {p["id"]: p["events"] for p in profiles} == dict(per_card)
    frauds = {e.card_id for e in run["events"] if run["labels"][e.event_id]}
    for p in profiles:
        assert (p["label"] > 0) == (p["id"] in frauds)
        newest = max(e.ts for e in run["events"] if e.card_id == p["id"])
        assert p["updated"] == newest


def test_similar_entities_are_the_nearest_profiles_nearest_first(settings, api, run):
    _, entities_c = run["collections"]
    everyone = milvus_rows(settings, entities_c, 'id != ""', ["id", "vector"])
    card = max(Counter(e.card_id for e in run["events"]).items(), key=lambda kv: kv[1])[0]
    mine = next(r["vector"] for r in everyone if r["id"] == card)
    status, body = call(f"{api}/v1/similar/fraud", {"entity": card, "kind": "entities", "k": 5})
    assert status == 200, body
    got = body["neighbours"]
    assert card not in [n["entity"] for n in got]
    distances = [n["distance"] for n in got]
    assert distances == sorted(distances) and len(got) == 5
    # Milvus' L2 is the squared distance: recompute it by brute force over every profile.
    brute = sorted((sum((a - b) ** 2 for a, b in zip(r["vector"], mine, strict=True)), r["id"])
                   for r in everyone if r["id"] != card)
    assert got[0]["entity"] == brute[0][1]
    assert got[0]["distance"] == pytest.approx(brute[0][0], rel=1e-3, abs=1e-4)
    assert {"label_rate", "events", "updated"} <= set(got[0])


def test_similar_past_frauds_of_an_event(settings, api, run):
    fraud = next(e for e in run["events"] if run["labels"][e.event_id])
    status, body = call(f"{api}/v1/similar/fraud",
                        {"event": fraud.model_dump(), "k": 7, "label": True})
    assert status == 200, body
    got = body["neighbours"]
    assert len(got) == 7 and all(n["label"] is True for n in got)
    assert [n["distance"] for n in got] == sorted(n["distance"] for n in got)
    assert {"event_id", "entity", "event_time", "score", "model_version"} <= set(got[0])
    assert body["query"] == {"event_id": fraud.event_id, "entity": fraud.card_id}
    # By entity, the card's own events are left out.
    status, body = call(f"{api}/v1/similar/fraud", {"entity": fraud.card_id, "k": 10})
    assert status == 200 and body["neighbours"]
    assert fraud.card_id not in {n["entity"] for n in body["neighbours"]}


@pytest.mark.parametrize("path, payload, status, field", [
    ("/v1/similar/fraud", {"entity": "a", "event": {}}, 422, "$"),
    ("/v1/similar/fraud", {"entity": "a", "k": 0}, 422, "k"),
    ("/v1/similar/fraud", {"event": {"card_id": "c"}, "k": 3}, 422, "event.amount"),
    ("/v1/similar/fraud", {"entity": "never-seen"}, 404, "entity"),
    ("/v1/similar/pricing", {"entity": "a"}, 404, "pipeline"),
    ("/v1/similar/nope", {"entity": "a"}, 404, "pipeline"),
])
def test_bad_similar_queries_get_a_json_4xx_naming_the_field(api, run, path, payload, status,
                                                             field):
    got, body = call(f"{api}{path}", payload)
    assert got == status, body
    assert field in body["fields"]


def test_erasing_an_entity_removes_its_features_and_vectors_and_they_stay_gone(
        settings, topics, api, run):
    events_c, entities_c = run["collections"]
    card_events = [e for e in run["events"] if e.card_id == run["events"][0].card_id]
    card = card_events[0].card_id
    flt = f"entity == {quoted(card)}"
    key = RedisKeys(settings.redis_prefix, "fraud").features(card)
    client = redis.Redis.from_url(settings.redis_url)
    assert client.exists(key)
    n_vectors = len(milvus_rows(settings, events_c, flt, ["id"]))
    assert n_vectors == len(card_events)

    status, body = call(f"{api}/v1/entities/fraud/{card}", method="DELETE")
    assert status == 200, body
    assert body["deleted"] == {"features": 1, "event_vectors": n_vectors, "entity_vectors": 1}
    until = body["erased_until"]
    assert until == max(e.ts for e in card_events)
    assert not client.exists(key)
    assert milvus_rows(settings, events_c, flt, ["id"]) == []
    assert milvus_rows(settings, entities_c, f"id == {quoted(card)}", ["id"]) == []

    # An event from before the erasure is scored but not remembered.
    old = card_events[-1].model_copy(update={"event_id": f"{card}-old", "ts": until - 10.0})
    new = card_events[-1].model_copy(update={"event_id": f"{card}-new", "ts": until + 20.0})
    send(settings, topics.events, [(card, old.to_json())])
    wait_for(lambda: any(p["event_id"] == old.event_id
                         for p in read_all(settings, topics.predictions)), 60,
             "the old event's prediction")
    assert not client.exists(key)
    # One after it starts the card's history afresh.
    send(settings, topics.events, [(card, new.to_json())])
    wait_for(lambda: client.exists(key), 60, "the new event's features")
    features = redis_features(settings, "fraud", [card])[card]
    assert features["count_1h"] == 1.0 and features["new_merchant"] == 1.0
    # Labeled, the new event becomes a vector, the old one does not.
    send(settings, topics.labels, [
        (e.event_id, FraudLabel(event_id=e.event_id, is_fraud=False, ts=e.ts + 1).to_json())
        for e in (old, new)])
    wait_for(lambda: milvus_rows(settings, events_c, flt, ["id"]) != [], 60,
             "the new event's vector")
    time.sleep(2 * settings.vector_flush_seconds + 1)  # the old one would be there by now
    assert [r["id"] for r in milvus_rows(settings, events_c, flt, ["id"])] == [new.event_id]
    # Erasing again erases what came since.
    status, body = call(f"{api}/v1/entities/fraud/{card}", method="DELETE")
    assert status == 200, body
    assert body["deleted"] == {"features": 1, "event_vectors": 1, "entity_vectors": 1}
    assert body["erased_until"] == new.ts
    # Any id is quoted safely; an unknown entity erases nothing.
    for odd in ("never-seen-card", 'carte "café" \\ 😀'):
        status, body = call(f"{api}/v1/entities/fraud/{urllib.parse.quote(odd, safe='')}",
                            method="DELETE")
        assert status == 200, body
        assert body["entity"] == odd
        assert body["deleted"] == {"features": 0, "event_vectors": 0, "entity_vectors": 0}
    client.close()


def test_fraud_knn_scores_each_event_with_the_fraud_rate_of_its_neighbours(
        settings, api, worker_metrics):
    """Through the worker and the API: once the embeddings are warm, every scored event
    carries the neighbour feature, and card testing has more fraud among its neighbours
    than a normal purchase."""
    topics = PipelineTopics.for_spec(FRAUD_KNN, settings.namespace)
    run_id = uuid.uuid4().hex[:8]
    n = 1400
    # Card testing five times as often as by default: past bursts for the probe to meet.
    emissions = list(FraudGenerator(FraudStreamConfig(
        events=n, seed=8, run_id=run_id, card_prefix=f"knn-{run_id}", cards=150,
        card_testing_rate=0.01, label_delay=5.0,
        start_time=time.time() - n / 2.0)).emissions())
    send(settings, topics.events, [(e.key, e.record.to_json()) for e in emissions
                                   if e.kind == "event"])
    send(settings, topics.labels, [(e.key, e.record.to_json()) for e in emissions
                                   if e.kind == "label"])
    r = redis.Redis.from_url(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix, "fraud_knn")
    wait_for(lambda: r.hexists(keys.embedding, "embedder"), 240, "a frozen embedder")
    events_c, _ = collection_names(settings, "fraud_knn")
    wait_for(lambda: len(milvus_rows(settings, events_c, 'id != ""', ["id"])) >= n, 120,
             "every labeled event in Milvus", interval=1)

    def lookups(outcome: str) -> float:
        return worker_metrics().value("driftline_neighbour_lookups_total", pipeline="fraud_knn",
                                      process="worker", outcome=outcome)

    # Scored before the embedder existed: the default, counted as such.
    assert lookups("not_ready") > 0
    outcomes = ("ok", "timeout", "not_ready", "error")
    before = {o: lookups(o) for o in outcomes}
    cases = probe_cases(time.time(), run_id)
    send(settings, topics.events,
         [(t.card_id, t.to_json()) for c in cases.values() for t in c.history])
    burst = cases["card_testing"].history
    wait_for(lambda: r.hget(keys.features(burst[0].card_id), "count_1m") == b"8.0", 60,
             "the burst's features in Redis")
    wait_for(lambda: r.exists(keys.features(cases["normal"].probe.card_id)), 60,
             "the normal card's features in Redis")
    # The worker searched for each of them (a search past its budget, under load, is
    # scored without the feature; it is counted as a timeout).
    history = sum(len(c.history) for c in cases.values())
    wait_for(lambda: sum(lookups(o) - before[o] for o in outcomes) >= history, 60,
             "a neighbour search for each event")
    assert lookups("ok") > before["ok"]
    assert (lookups("not_ready"), lookups("error")) == (before["not_ready"], before["error"])
    stored = float(r.hget(keys.features(burst[0].card_id), "fraud_rate_knn"))
    assert 0.0 <= stored <= 1.0
    scores = {}
    for name, case in cases.items():
        status, body = call(f"{api}/v1/score/fraud_knn", case.probe.model_dump())
        assert status == 200, body
        scores[name] = body["features"]["fraud_rate_knn"]
    assert scores["card_testing"] > scores["normal"]
    r.close()
