from online_models.learner import OnlineLearner
from online_models.spec import build_model, predict
from streams.schemas import TrainingExample


def example(i, x, y, s=0.5):
    return TrainingExample(event_id=f"e{i}", entity="c", event_time=float(i),
                           features={"x": x}, score=s, model_version="v0.0", label=y,
                           label_time=float(i) + 1)


def test_learns_each_event_once_even_when_redelivered():
    learner = OnlineLearner("fraud", "binary", build_model("fraud_logistic"))
    for i in range(10):
        assert learner.learn(example(i, float(i), i % 2 == 0))
    for i in range(10):
        assert not learner.learn(example(i, float(i), i % 2 == 0))
    assert (learner.updates, learner.duplicates, learner.version) == (10, 10, "v0.10")


def test_learning_moves_the_score_towards_the_labels():
    learner = OnlineLearner("fraud", "binary", build_model("fraud_logistic"))
    for i in range(400):
        positive = i % 2 == 0
        learner.learn(example(i, 5.0 if positive else -5.0, positive))
    assert predict(learner.model, "binary", {"x": 5.0}) > 0.9
    assert predict(learner.model, "binary", {"x": -5.0}) < 0.1


def test_prequential_metrics_use_the_score_served_before_learning():
    learner = OnlineLearner("fraud", "binary", build_model("fraud_logistic"))
    # Served scores that rank perfectly: ROC AUC 1 whatever the model learns meanwhile.
    for i in range(100):
        y = i % 4 == 0
        learner.learn(example(i, 0.0, y, s=0.9 if y else 0.1))
    m = learner.metrics()
    assert m["roc_auc"] == 1.0
    assert m["accuracy"] == 1.0


def test_dedupe_memory_is_bounded():
    learner = OnlineLearner("fraud", "binary", build_model("fraud_logistic"), dedupe_window=5)
    for i in range(10):
        learner.learn(example(i, 0.0, False))
    assert learner.learn(example(0, 0.0, False))  # forgotten: older than the window
    assert not learner.learn(example(9, 0.0, False))


def test_regression_learner_tracks_mae_and_rmse_of_served_predictions():
    learner = OnlineLearner("pricing", "regression", build_model("pricing_linear"))
    for i in range(50):
        learner.learn(example(i, 1.0, 10.0, s=8.0))  # served 8, truth 10
    m = learner.metrics()
    assert set(m) == {"mae", "rmse"}
    assert m["mae"] == 2.0 and m["rmse"] == 2.0
