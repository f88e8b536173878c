"""Candidate models: a retrain trains each declared model on the same window and the best
on the hold-out challenges the champion, with every candidate's figures in the outcome."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from river import dummy

from online_models.retrain import candidates_of, retrain
from streams.catalog.fraud import FRAUD, fraud_logistic
from streams.declarations import RetrainPolicy, model_name
from streams.schemas import TrainingExample

LOGISTIC = model_name(fraud_logistic)


def prior():
    """Knows only the base rate: every score the same (ROC AUC 0.5)."""
    return dummy.PriorClassifier()


def broken():
    raise RuntimeError("no such library")


PRIOR = model_name(prior)


def window(n: int = 4000, seed: int = 1) -> list[TrainingExample]:
    """Fraud is a large amount, mostly: a linear model separates it, the prior cannot."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        amount = rng.random()
        fraud = (amount > 0.7) != (rng.random() < 0.05)
        out.append(TrainingExample(
            event_id=f"e{i}", entity=f"c{i % 50}", event_time=float(i),
            features={"amount": amount, "noise": rng.random()}, score=0.5,
            model_version="v0.0", label=fraud, label_time=i + 1.0))
    return out


def test_the_better_candidate_challenges_and_every_candidate_is_reported():
    spec = replace(FRAUD, model=prior, candidates=(fraud_logistic,))
    outcome = retrain(spec, window())
    assert list(outcome.candidates) == [PRIOR, LOGISTIC]  # the pipeline's model first
    assert outcome.candidates[PRIOR]["roc_auc"] == pytest.approx(0.5)
    assert outcome.candidates[LOGISTIC]["roc_auc"] > 0.85
    assert outcome.spec == LOGISTIC
    assert outcome.challenger == outcome.candidates[LOGISTIC]
    assert outcome.promote  # the champion served 0.5 throughout
    assert set(outcome.seconds) == {PRIOR, LOGISTIC}
    assert all(s >= 0 for s in outcome.seconds.values())
    # The model that won is the one returned, trained on the window.
    assert outcome.challenger_model.predict_proba_one({"amount": 0.95, "noise": 0.5})[True] \
        > outcome.challenger_model.predict_proba_one({"amount": 0.05, "noise": 0.5})[True]
    summary = outcome.summary()
    assert summary["spec"] == LOGISTIC
    assert summary["candidates"] == outcome.candidates
    assert set(summary["candidate_seconds"]) == {PRIOR, LOGISTIC}


def test_the_order_of_declaration_does_not_change_the_winner():
    first = retrain(replace(FRAUD, candidates=(prior,)), window())
    second = retrain(replace(FRAUD, model=prior, candidates=(fraud_logistic,)), window())
    assert first.spec == second.spec == LOGISTIC
    assert first.candidates == second.candidates  # deterministic, the same figures


def test_a_smaller_is_better_metric_picks_the_smallest():
    spec = replace(FRAUD, model=prior, candidates=(fraud_logistic,),
                   retrain=RetrainPolicy(metric="log_loss"))
    outcome = retrain(spec, window())
    assert outcome.metric == "log_loss"
    assert outcome.candidates[LOGISTIC]["log_loss"] < outcome.candidates[PRIOR]["log_loss"]
    assert outcome.spec == LOGISTIC


def test_a_tie_goes_to_the_model_declared_first():
    spec = replace(FRAUD, model=prior, candidates=(dummy.PriorClassifier,))
    outcome = retrain(spec, window())
    assert outcome.candidates[PRIOR] == outcome.candidates[model_name(dummy.PriorClassifier)]
    assert outcome.spec == PRIOR


def test_candidates_are_deduplicated_by_model_name():
    spec = replace(FRAUD, candidates=(fraud_logistic, LOGISTIC, prior, PRIOR))
    assert list(candidates_of(spec)) == [LOGISTIC, PRIOR]
    # The retrain policy's model stands for the pipeline's.
    spec = replace(FRAUD, retrain=RetrainPolicy(model=prior), candidates=(fraud_logistic,))
    assert list(candidates_of(spec)) == [PRIOR, LOGISTIC]


def test_a_failing_candidate_is_left_out_and_reported():
    outcome = retrain(replace(FRAUD, candidates=(broken, prior)), window())
    assert outcome.spec == LOGISTIC
    assert list(outcome.candidates) == [LOGISTIC, PRIOR]
    assert "no such library" in outcome.failed[model_name(broken)]
    assert "no such library" in outcome.summary()["candidates_failed"][model_name(broken)]


def test_when_every_candidate_fails_the_retrain_fails():
    with pytest.raises(RuntimeError, match="no such library"):
        retrain(replace(FRAUD, model=broken), window())


def test_a_pipeline_without_candidates_trains_its_own_model_only():
    outcome = retrain(FRAUD, window())
    assert outcome.spec == LOGISTIC
    assert list(outcome.candidates) == [LOGISTIC]
    assert outcome.challenger == outcome.candidates[LOGISTIC]
    assert not outcome.failed and "candidates_failed" not in outcome.summary()
