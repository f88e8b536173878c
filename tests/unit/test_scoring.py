"""The API's scoring logic without Redis: deadlines, the fallback and its breaker, variants,
and the inference cache's key. The feature store is a stand-in; everything else is real."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from driftline.adapters.config import Settings
from driftline.adapters.stores import ModelSnapshot
from online_models.spec import build_model, predict
from serving.scoring import BREAKER_FAILURES, Caches, PipelineScorer, Unavailable
from serving.traffic import TrafficSplit
from streams.catalog.fraud import FRAUD, Transaction


class Store:
    """Stands in for the feature store: answers, answers slowly, or fails."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay, self.error, self.reads = delay, error, 0

    async def states_json(self, entities):
        self.reads += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return [None for _ in entities]


def trained(positive_amount: float):
    model = build_model(FRAUD.model)
    for i in range(300):
        amount = positive_amount if i % 2 else 20.0
        model.learn_one({"amount": amount, "log_amount": 1.0}, bool(i % 2))
    return model


def scorer(store: Store, spec=FRAUD, **settings) -> PipelineScorer:
    s = Settings(api_deadline_seconds=0.05, **settings)
    out = PipelineScorer(s, spec, redis=None, caches=Caches.from_settings(s))
    out.store = store
    return out


def payment(card: str = "c1", amount: float = 900.0) -> Transaction:
    return Transaction(event_id=f"e-{card}", card_id=card, merchant_id="m", amount=amount,
                       ts=1.7e9)


async def test_a_slow_store_gets_the_fallback_within_the_deadline():
    s = scorer(Store(delay=1.0))
    s.champion.current = ModelSnapshot(trained(900.0), "v0.300", 0.0, snapshot_id="a")
    started = asyncio.get_running_loop().time()
    score = await s.score(payment())
    assert asyncio.get_running_loop().time() - started < 0.5
    assert (score.degraded, score.degraded_reason) == (True, "features_timeout")
    assert score.model_version == "prior"  # no fallback model loaded yet
    assert score.prediction == FRAUD.fallback.prior
    s.fallback_model, s.fallback_version, s.fallback_id = trained(900.0), "v0.300-fb", "a"
    score = await s.score(payment())
    assert score.model_version == "v0.300-fb"
    assert score.prediction == pytest.approx(
        predict(s.fallback_model, "binary", {"amount": 900.0, "log_amount": score.features[
            "log_amount"]}))
    assert set(score.features) == set(FRAUD.fallback.features)


async def test_failures_in_a_row_open_the_breaker_and_spare_the_store():
    store = Store(error=ConnectionError("refused"))
    s = scorer(store)
    s.champion.current = ModelSnapshot(trained(900.0), "v0.300", 0.0, snapshot_id="a")
    # Reads failing together (in flight at once) are one failure, not three.
    scores = await asyncio.gather(*(s.score(payment(f"c{i}")) for i in range(5)))
    assert {x.degraded_reason for x in scores} == {"features_unavailable"}
    assert s._open_until == 0.0
    for _ in range(BREAKER_FAILURES + 3):  # failures at separate moments open it
        await asyncio.sleep(s.deadline)
        score = await s.score(payment())
        assert score.degraded_reason == "features_unavailable"
    assert store.reads == 5 + BREAKER_FAILURES - 1  # the breaker answered the rest
    store.error = None
    s._open_until = 0.0  # the cool-down is over
    assert not (await s.score(payment())).degraded


async def test_no_model_and_no_fallback_declared_is_unavailable():
    s = scorer(Store(), spec=replace(FRAUD, fallback=None))
    with pytest.raises(Unavailable, match="no_model|no model"):
        await s.score(payment())


async def test_a_split_serves_the_challenger_by_entity_until_it_is_promoted():
    s = scorer(Store())
    s.champion.current = ModelSnapshot(trained(900.0), "v1.300", 0.0, snapshot_id="a")
    s.challenger.current = ModelSnapshot(trained(20.0), "v2", 0.0, snapshot_id="b")
    s.split = TrafficSplit(mode="split", challenger=2, percent=50, experiment="x")
    cards = [f"c{i}" for i in range(40)]
    variants = {c: (await s.score(payment(c))).variant for c in cards}
    assert variants == {c: ("challenger" if s.split.serves_challenger(c) else "champion")
                        for c in cards}
    assert 5 < list(variants.values()).count("challenger") < 35
    # Promoted: the champion is now revision 2, learning on; it serves everyone.
    s.champion.current = ModelSnapshot(trained(900.0), "v2.310", 0.0, snapshot_id="c")
    assert {(await s.score(payment(c))).variant for c in cards} == {"champion"}


async def test_a_shadow_is_scored_but_never_returned():
    s = scorer(Store())
    s.champion.current = ModelSnapshot(trained(900.0), "v1.300", 0.0, snapshot_id="a")
    s.challenger.current = ModelSnapshot(trained(20.0), "v2", 0.0, snapshot_id="b")
    s.split = TrafficSplit(mode="shadow", challenger=2, percent=100, experiment="x")
    score = await s.score(payment())
    assert score.variant == "champion" and score.model_version == "v1.300"


async def test_the_inference_cache_keys_on_the_snapshot_not_the_version_string():
    s = scorer(Store())
    s.champion.current = ModelSnapshot(trained(900.0), "v2.1000", 0.0, snapshot_id="a")
    first = await s.score(payment())
    # A rollback publishes another model under a version string served before.
    s.champion.current = ModelSnapshot(trained(20.0), "v2.1000", 0.0, snapshot_id="b")
    second = await s.score(payment())
    assert first.model_version == second.model_version
    assert first.prediction != pytest.approx(second.prediction)
