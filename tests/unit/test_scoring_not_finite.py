"""A poisoned model (its scores NaN or infinite) never answers: the fallback does, marked
degraded, or a pipeline without one is unavailable (a 503), never NaN in the JSON."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from driftline.adapters.stores import ModelSnapshot
from serving.scoring import Unavailable
from serving.traffic import TrafficSplit
from streams.catalog.fraud import FRAUD
from tests.unit.test_scoring import Store, payment, scorer, trained

REASON = "score_not_finite"


class Poisoned:
    """A model whose every score is ``value``, as a model whose weights went NaN gives."""

    def __init__(self, value: float) -> None:
        self.value = value

    def predict_proba_one(self, x: dict) -> dict:
        return {True: self.value, False: self.value}

    def predict_one(self, x: dict) -> float:
        return self.value


def degraded_count() -> float:
    return REGISTRY.get_sample_value("driftline_api_degraded_total",
                                     {"pipeline": "fraud", "reason": REASON}) or 0.0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("explain", [True, False])
async def test_a_non_finite_score_is_the_fallbacks_marked_degraded(value, explain):
    s = scorer(Store())
    s.champion.current = ModelSnapshot(Poisoned(value), "v1.300", 0.0, snapshot_id="p")
    before = degraded_count()
    score = await s.score(payment(), explain)
    assert (score.degraded, score.degraded_reason, score.variant) == (True, REASON, "fallback")
    assert (score.prediction, score.model_version) == (FRAUD.fallback.prior, "prior")
    assert degraded_count() == before + 1
    # With a fallback model loaded, it answers.
    s.fallback_model, s.fallback_version, s.fallback_id = trained(900.0), "v1.300-fb", "p"
    score = await s.score(payment(), explain)
    assert (score.degraded_reason, score.model_version) == (REASON, "v1.300-fb")
    assert math.isfinite(score.prediction)


async def test_a_poisoned_fallback_model_gives_the_prior():
    s = scorer(Store())
    s.champion.current = ModelSnapshot(Poisoned(math.nan), "v1.300", 0.0, snapshot_id="p")
    s.fallback_model, s.fallback_version, s.fallback_id = Poisoned(math.nan), "v1.300-fb", "p"
    score = await s.score(payment())
    assert (score.degraded_reason, score.model_version) == (REASON, "prior")
    assert score.prediction == FRAUD.fallback.prior and score.contributions == ()


async def test_a_batch_with_a_poisoned_model_is_all_fallback():
    s = scorer(Store())
    s.champion.current = ModelSnapshot(Poisoned(math.nan), "v1.300", 0.0, snapshot_id="p")
    scores = await s.score_batch([payment(f"c{i}") for i in range(5)])
    assert {(x.degraded_reason, x.prediction) for x in scores} == {(REASON,
                                                                    FRAUD.fallback.prior)}


async def test_without_a_fallback_a_non_finite_score_is_unavailable():
    s = scorer(Store(), spec=replace(FRAUD, fallback=None))
    s.champion.current = ModelSnapshot(Poisoned(math.nan), "v1.300", 0.0, snapshot_id="p")
    with pytest.raises(Unavailable, match="score not finite"):
        await s.score(payment())


async def test_a_poisoned_challenger_gives_its_entities_the_fallback():
    s = scorer(Store())
    s.champion.current = ModelSnapshot(trained(900.0), "v1.300", 0.0, snapshot_id="a")
    s.challenger.current = ModelSnapshot(Poisoned(math.nan), "v2", 0.0, snapshot_id="b")
    s.split = TrafficSplit(mode="split", challenger=2, percent=50, experiment="x")
    for card in (f"c{i}" for i in range(20)):
        score = await s.score(payment(card))
        assert math.isfinite(score.prediction)
        assert score.degraded is s.split.serves_challenger(card)


async def test_a_poisoned_shadow_leaves_the_champions_answer_alone():
    s = scorer(Store())
    s.champion.current = ModelSnapshot(trained(900.0), "v1.300", 0.0, snapshot_id="a")
    s.challenger.current = ModelSnapshot(Poisoned(math.nan), "v2", 0.0, snapshot_id="b")
    s.split = TrafficSplit(mode="shadow", challenger=2, percent=100, experiment="x")
    score = await s.score(payment())
    assert (score.variant, score.degraded) == ("champion", False)
    assert math.isfinite(score.prediction)
    assert math.isfinite(REGISTRY.get_sample_value("driftline_api_score_sum",
                                                   {"pipeline": "fraud", "variant": "shadow"})
                         or 0.0)
