"""Vectors in Milvus (Milvus Lite, real), similar-case search and erasure, end to end."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
import redis

from driftline.stores import RedisKeys
from driftline.vectors import collection_names, quoted
from streams.catalog.fraud import FRAUD
from streams.generators.fraud import FraudGenerator, FraudStreamConfig
from tests.integration.conftest import call, milvus_rows, redis_features, send, wait_for

pytestmark = pytest.mark.integration

N_EVENTS = 1500


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
    send(settings, topics.events, [(e.key, e.record.to_json()) for e in emissions
                                   if e.kind == "event"])
    send(settings, topics.labels, [(e.key, e.record.to_json()) for e in emissions
                                   if e.kind == "label"])
    events_c, entities_c = collection_names(settings, "fraud")
    flt = f"entity like {quoted(prefix + '%')}"

    def embedded() -> bool:
        try:
            return len(milvus_rows(settings, events_c, flt, ["id"])) >= len(labels)
        except Exception:  # noqa: BLE001 - the collection is made with the first batch
            return False

    wait_for(embedded, 240, f"{len(labels)} event vectors in Milvus", interval=2)
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

    # An event from before the erasure is scored but not remembered; one after it starts
    # the card's history afresh.
    old = card_events[-1].model_copy(update={"event_id": f"{card}-old", "ts": until - 10.0})
    new = card_events[-1].model_copy(update={"event_id": f"{card}-new", "ts": until + 20.0})
    time.sleep(1.0)  # the worker reads the erasure register every model refresh
    send(settings, topics.events, [(card, old.to_json()), (card, new.to_json())])
    wait_for(lambda: client.exists(key), 60, "the new event's features")
    features = redis_features(settings, "fraud", [card])[card]
    assert features["count_1h"] == 1.0 and features["new_merchant"] == 1.0
    # Erasing again is harmless; an unknown entity erases nothing.
    status, body = call(f"{api}/v1/entities/fraud/never-seen-card", method="DELETE")
    assert status == 200 and body["deleted"] == {"features": 0, "event_vectors": 0,
                                                 "entity_vectors": 0}
    client.close()
