import pickle

from online_models.learner import OnlineLearner
from online_models.retrain import latest_window, retrain
from online_models.spec import build_model, predict
from streams.catalog.fraud import FRAUD
from streams.catalog.pricing import PRICING
from streams.schemas import TrainingExample


def example(i, x, y, s=0.5, version="v0.1", **features):
    return TrainingExample(event_id=f"e{i}", entity="c", event_time=float(i),
                           features={"x": x, **features}, score=s, model_version=version,
                           label=y, label_time=float(i) + 1)


def fraud_learner(**kw):
    return OnlineLearner(FRAUD, build_model(FRAUD.model), **kw)


def test_learns_each_event_once_even_when_redelivered():
    learner = fraud_learner()
    for i in range(10):
        assert learner.learn(example(i, float(i), i % 2 == 0))
    for i in range(10):
        assert not learner.learn(example(i, float(i), i % 2 == 0))
    assert (learner.updates, learner.duplicates, learner.version) == (10, 10, "v0.10")


def test_learning_moves_the_score_towards_the_labels():
    learner = fraud_learner()
    for i in range(400):
        positive = i % 2 == 0
        learner.learn(example(i, 5.0 if positive else -5.0, positive))
    assert predict(learner.model, "binary", {"x": 5.0}) > 0.9
    assert predict(learner.model, "binary", {"x": -5.0}) < 0.1


def test_prequential_metrics_use_the_score_served_before_learning():
    learner = fraud_learner()
    # Served scores that rank perfectly: ROC AUC 1 whatever the model learns meanwhile.
    for i in range(100):
        y = i % 4 == 0
        learner.learn(example(i, 0.0, y, s=0.9 if y else 0.1))
    m = learner.metrics_by_version()["v0"]
    assert m["roc_auc"] == 1.0
    assert m["accuracy"] == 1.0
    assert m["labels"] == 100


def test_metrics_are_kept_per_model_version_that_served_the_score():
    learner = fraud_learner()
    for i in range(50):
        learner.learn(example(i, 0.0, True, s=0.9, version=f"v1.{i}"))
    for i in range(50, 80):
        learner.learn(example(i, 0.0, True, s=0.1, version=f"v2.{i}"))
    by_version = learner.metrics_by_version()
    assert by_version["v1"]["accuracy"] == 1.0 and by_version["v1"]["labels"] == 50
    assert by_version["v2"]["accuracy"] == 0.0 and by_version["v2"]["labels"] == 30


def test_dedupe_memory_is_bounded():
    learner = fraud_learner(dedupe_window=5)
    for i in range(10):
        learner.learn(example(i, 0.0, False))
    assert learner.learn(example(0, 0.0, False))  # forgotten: older than the window
    assert not learner.learn(example(9, 0.0, False))


def test_regression_learner_tracks_mae_and_rmse_of_served_predictions():
    learner = OnlineLearner(PRICING, build_model(PRICING.model))
    for i in range(50):
        learner.learn(example(i, 1.0, 10.0, s=8.0))  # served 8, truth 10
    m = learner.metrics_by_version()["v0"]
    assert m["mae"] == 2.0 and m["rmse"] == 2.0


def test_a_pickled_learner_resumes_where_it_stopped():
    learner = fraud_learner()
    for i in range(30):
        learner.learn(example(i, float(i % 3), i % 3 == 0))
    learner.next_offset = 30
    restored = pickle.loads(pickle.dumps(learner))
    assert (restored.updates, restored.next_offset, restored.version) == (30, 30, "v0.30")
    assert not restored.learn(example(29, 0.0, True))  # its dedupe memory came along
    probe = {"x": 2.0}
    assert predict(restored.model, "binary", probe) == predict(learner.model, "binary", probe)


def test_an_abrupt_rise_of_the_error_rate_is_reported_as_concept_drift():
    learner = fraud_learner()
    for i in range(3000):
        y = i % 2 == 0
        right = (i * 7919) % 10 != 0  # 90% right before the change, 30% after
        if i >= 2000:
            right = (i * 7919) % 10 < 3
        score = (0.9 if y else 0.1) if right else (0.1 if y else 0.9)
        learner.learn(example(i, 0.0, y, s=score))
    detections = learner.pop_detections()
    concept = [d for d in detections if d.kind == "concept"]
    assert concept, "no concept drift detected"
    assert learner.pop_detections() == []


def test_swap_changes_the_model_and_revision_and_what_it_will_learn_again():
    learner = fraud_learner()
    fresh = build_model(FRAUD.model)
    learner.swap(fresh, 3, [{"x": 1.0}] * 10, learned_through=4)
    assert learner.model is fresh and learner.version == "v3.0"
    # An example the promoted model was trained on counts, but is not learned twice.
    learner.learn(example(1, 5.0, True), update_model=False)
    assert learner.updates == 1
    assert predict(fresh, "binary", {"x": 5.0}) == 0.5


def test_retrain_promotes_only_a_challenger_better_by_the_margin():
    # The served scores were uninformative (0.5); the features determine the label.
    good = [example(i, float(i % 2), bool(i % 2)) for i in range(4000)]
    outcome = retrain(FRAUD, good)
    assert outcome.promote and outcome.challenger["roc_auc"] > 0.99
    # Now the champion served perfect scores: a challenger cannot beat it by the margin.
    perfect = [example(i, float(i % 2), bool(i % 2), s=0.99 if i % 2 else 0.01)
               for i in range(4000)]
    assert not retrain(FRAUD, perfect).promote


def test_retrain_reads_each_event_once_and_only_the_latest_window():
    examples = [example(i, float(i % 2), bool(i % 2)) for i in range(5000)]
    window = latest_window(FRAUD, examples + examples[-100:])  # the join's duplicates
    ids = [ex.event_id for ex in window]
    assert len(ids) == len(set(ids)) == FRAUD.retrain.window
    assert ids == [ex.event_id for ex in examples[-FRAUD.retrain.window:]]


def test_scores_of_an_older_revision_or_the_untrained_model_do_not_feed_concept_drift():
    learner = fraud_learner()
    learner.swap(build_model(FRAUD.model), 2, [])
    for i in range(3000):
        wrong = i >= 1000  # every score wrong after 1000: drift, if it were watched
        y = i % 2 == 0
        score = (0.1 if y else 0.9) if wrong else (0.9 if y else 0.1)
        learner.learn(example(i, 0.0, y, s=score, version="v1.500" if i % 2 else "v2.0"))
    assert [d for d in learner.pop_detections() if d.kind == "concept"] == []


def test_a_shifted_feature_is_reported_as_feature_drift_naming_it():
    import random

    rng = random.Random(3)
    learner = fraud_learner()
    for i in range(6000):
        shift = 3.0 if i >= 4000 else 0.0
        learner.learn(example(i, rng.gauss(0, 1), i % 2 == 0, amount=rng.gauss(10 + shift, 1)))
    feature = [d for d in learner.pop_detections() if d.kind == "feature"]
    assert feature, "no feature drift detected"
    assert feature[0].evidence["worst"] == "amount"


def test_the_fallback_learns_the_declared_features_alone_from_every_example():
    learner = fraud_learner()
    assert FRAUD.fallback.features == ("amount", "log_amount")
    for i in range(400):
        positive = i % 2 == 0
        learner.learn(example(i, 0.0, positive, amount=900.0 if positive else 10.0,
                              log_amount=6.8 if positive else 2.4, count_1m=float(i)))
    fallback = learner.fallback
    assert predict(fallback, "binary", {"amount": 900.0, "log_amount": 6.8}) > 0.9
    assert predict(fallback, "binary", {"amount": 10.0, "log_amount": 2.4}) < 0.1
    # It never saw the other features: the scaler holds only the declared ones.
    assert set(fallback["StandardScaler"].means) == {"amount", "log_amount"}


def test_a_checkpoint_from_before_fallbacks_gets_one():
    learner = fraud_learner()
    del learner.fallback, learner.fallback_features  # as pickled by the older code
    restored = pickle.loads(pickle.dumps(learner))
    assert restored.fallback is None
    restored.add_fallback(FRAUD)
    assert restored.fallback is not None and restored.fallback_features == ("amount",
                                                                            "log_amount")


def test_a_careful_step_that_would_poison_the_model_is_undone_and_refused():
    import math

    import pytest

    from streams.schemas import InvalidRecord

    careless, careful = fraud_learner(), fraud_learner()
    for learner in (careless, careful):
        for i in range(20):
            learner.learn(example(i, float(i % 7), i % 3 == 0))
    huge = example(99, 1e300, True)
    careless.learn(huge)
    assert not careless.healthy([{"x": 1.0}])
    with pytest.raises(InvalidRecord, match="non-finite"):
        careful.learn(huge, careful=True)
    assert careful.healthy([{"x": 1.0}])
    assert (careful.updates, careful.version) == (20, "v0.20")  # not counted
    assert math.isfinite(predict(careful.model, "binary", {"x": 3.0}))


def test_an_example_with_a_feature_that_is_not_finite_is_refused():
    import pytest

    from streams.schemas import InvalidRecord

    learner = fraud_learner()
    with pytest.raises(InvalidRecord) as refused:
        learner.learn(example(1, float("nan"), True))
    assert refused.value.errors == {"features.x": "not a finite number"}
    assert learner.updates == 0 and learner.healthy([{"x": 1.0}])
