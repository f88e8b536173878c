"""Embedding logic without Milvus: vectors, profiles, the declaration, the query contract."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace

import pytest

from serving.schemas import SimilarQuery
from streams.catalog.fraud import FRAUD
from streams.catalog.pricing import PRICING
from streams.declarations import EmbeddingPolicy
from streams.embeddings import EventEmbedder, Profile, compress, neighbour_rate, policy_of
from streams.parity import compare
from streams.schemas import InvalidRecord, TrainingExample, parse


def spec_with(**policy):
    return replace(FRAUD, embeddings=EmbeddingPolicy(**policy))


def test_the_vector_has_one_dimension_per_embedded_feature_in_declared_order():
    embedder = EventEmbedder(FRAUD)
    assert embedder.names == FRAUD.feature_names
    assert embedder.dim == len(FRAUD.feature_names)
    chosen = EventEmbedder(spec_with(features=("count_1m", "amount"), fit_rows=2))
    assert chosen.names == ("count_1m", "amount")


def test_the_standardizer_freezes_after_fit_rows_and_vectors_stop_moving():
    embedder = EventEmbedder(spec_with(features=("amount",), fit_rows=3))
    for amount in (1.0, 10.0, 100.0):
        embedder.fit_one({"amount": amount})
    assert embedder.frozen
    before = embedder.vector({"amount": 10.0})
    for _ in range(50):
        embedder.fit_one({"amount": 1e6})
    assert embedder.vector({"amount": 10.0}) == before
    assert embedder.rows == 3
    # Standardized in compressed space: the middle amount sits at the mean.
    assert before[0] == pytest.approx(
        (compress(10.0) - (compress(1) + compress(10) + compress(100)) / 3)
        / _std([compress(1), compress(10), compress(100)]))


def _std(xs):
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))


def test_compression_keeps_sign_and_order():
    assert compress(-5.0) == -compress(5.0)
    assert compress(0.0) == 0.0
    assert compress(1.0) < compress(2.0) < compress(1e9)


def test_a_missing_feature_is_zero_and_the_embedder_survives_pickling():
    embedder = EventEmbedder(spec_with(features=("amount", "count_1m"), fit_rows=2))
    embedder.fit_one({"amount": 1.0})
    embedder.fit_one({"amount": 3.0, "count_1m": 2.0})
    again = pickle.loads(pickle.dumps(embedder))
    assert again.vector({"amount": 2.0}) == embedder.vector({"amount": 2.0})
    assert len(again.vector({})) == 2


def test_a_profile_is_the_time_decayed_mean_and_counts_each_offset_once():
    half_life = 100.0
    p = Profile.first([1.0, 0.0], 1.0, event_time=0.0, offset=1)
    p = p.add([0.0, 1.0], 0.0, event_time=100.0, offset=2, half_life=half_life)
    # The first event is one half-life old: weight 0.5 against 1.
    assert p.vector == pytest.approx((0.5 / 1.5, 1 / 1.5))
    assert p.label == pytest.approx(0.5 / 1.5)
    assert p.weight == pytest.approx(1.5)
    assert (p.events, p.updated, p.last_offset) == (2, 100.0, 2)
    assert p.add([9.0, 9.0], 1.0, event_time=200.0, offset=2, half_life=half_life) is p
    assert p.add([9.0, 9.0], 1.0, event_time=200.0, offset=1, half_life=half_life) is p


def test_an_out_of_order_event_enters_with_its_own_age():
    p = Profile.first([0.0], 0.0, event_time=100.0, offset=1)
    q = p.add([3.0], 1.0, event_time=0.0, offset=2, half_life=100.0)
    assert q.updated == 100.0
    assert q.vector[0] == pytest.approx(3.0 * 0.5 / 1.5)
    assert q.weight == pytest.approx(1.5)


def test_the_neighbour_rate_is_the_mean_label():
    assert neighbour_rate([1.0, 1.0, 0.0, 0.0]) == 0.5
    assert neighbour_rate([], default=0.03) == 0.03


def test_the_declaration_checks_its_embedding_policy():
    with pytest.raises(ValueError, match="unknown feature 'nope'"):
        spec_with(features=("nope",))
    with pytest.raises(ValueError, match="declared twice"):
        spec_with(neighbour_feature="amount")
    with pytest.raises(ValueError, match="fit_rows"):
        EmbeddingPolicy(fit_rows=1)
    with pytest.raises(ValueError, match="declares no embeddings"):
        policy_of(PRICING)
    spec = spec_with(neighbour_feature="fraud_rate_knn", neighbours=5)
    assert spec.model_feature_names == (*FRAUD.feature_names, "fraud_rate_knn")
    assert spec.describe()["embeddings"]["neighbours"] == 5


def test_parity_leaves_the_online_only_neighbour_feature_out():
    served = TrainingExample(event_id="a", entity="c", event_time=1.0,
                             features={"amount": 2.0, "fraud_rate_knn": 0.4}, score=0.1,
                             model_version="v0.1", label=True, label_time=2.0)
    assert not compare({"a": {"amount": 2.0}}, [served]).ok
    assert compare({"a": {"amount": 2.0}}, [served], online_only={"fraud_rate_knn"}).ok


@pytest.mark.parametrize("body, field", [
    ({}, "$"),
    ({"entity": "c", "event": {"amount": 1}}, "$"),
    ({"entity": "c", "k": 0}, "k"),
    ({"entity": "c", "k": 101}, "k"),
    ({"entity": "", "k": 3}, "entity"),
    ({"entity": "c", "kind": "cards"}, "kind"),
    ({"entity": "c", "label": "yes"}, "label"),
])
def test_a_bad_similar_query_names_its_field(body, field):
    with pytest.raises(InvalidRecord) as exc:
        parse(SimilarQuery, body)
    assert field in exc.value.errors


def test_a_good_similar_query_has_defaults():
    q = parse(SimilarQuery, {"entity": "card-1"})
    assert (q.k, q.kind, q.label, q.event) == (10, "events", None, None)
