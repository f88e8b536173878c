"""The retrainer's decisions on triggers, with the retrain itself and the control topic
replaced by recorders (the whole path runs for real in tests/integration)."""

from __future__ import annotations

import random
import time
from dataclasses import replace

import pytest
from river import dummy

from driftline.adapters.config import Settings
from driftline.adapters.topic_reader import TopicRecord
from online_models import lifecycle
from online_models import retrainer as retrainer_module
from online_models.registry import Lineage, Registry
from online_models.retrainer import Retrainer
from online_models.spec import build_model
from streams.catalog.fraud import fraud_logistic
from streams.declarations import model_name
from streams.schemas import ControlEvent, TrainingExample


class Recording(Retrainer):
    def __init__(self, settings, pipelines, registry):
        super().__init__(settings, pipelines, registry)
        self.retrained: list[ControlEvent] = []
        self.told: list[ControlEvent] = []

    def _retrain(self, st, ev, manual):
        self.retrained.append(ev)
        st.covered_until = (ev.offset or 0) + 3000

    def _tell(self, event):
        self.told.append(event)


@pytest.fixture
def retrainer(tmp_path):
    s = Settings().with_overrides(data_dir=tmp_path, namespace="unit")
    registry = Registry(s.registry_uri, s.registry_artifacts, s.namespace)
    return Recording(s, ["agrawal"], registry)


def trigger(kind="concept_drift", offset=100, direction="up"):
    return ControlEvent(kind=kind, pipeline="agrawal", at=time.time(), offset=offset,
                        evidence={"direction": direction}).to_json()


def test_a_rising_error_retrains_and_a_falling_one_does_not(retrainer):
    retrainer.handle("agrawal", trigger(direction="down"))
    assert retrainer.retrained == []
    assert [(e.kind, e.reason) for e in retrainer.told] == [("retrain_skipped", "not_worse")]
    retrainer.handle("agrawal", trigger(direction="up"))
    assert len(retrainer.retrained) == 1


def test_the_cool_down_and_covered_data_skip_drift_but_not_a_manual_request(retrainer):
    retrainer.handle("agrawal", trigger(offset=100))
    retrainer.handle("agrawal", trigger(offset=200))  # within the cool-down
    assert retrainer.told[-1].reason == "cooldown"
    retrainer.state["agrawal"].last_retrain_at -= 3600  # the cool-down is over
    retrainer.handle("agrawal", trigger(offset=300))  # its data was covered
    assert retrainer.told[-1].reason == "covered"
    retrainer.handle("agrawal", trigger(kind="retrain_requested", offset=None))
    retrainer.handle("agrawal", trigger(kind="feature_drift", offset=9000))
    assert [e.kind for e in retrainer.retrained] == ["concept_drift", "retrain_requested"]
    assert retrainer.told[-1].reason == "cooldown"  # the feature drift came too soon


def test_a_failed_retrain_is_reported_and_the_retrainer_goes_on(retrainer):
    def fail(st, ev, manual):
        raise RuntimeError("disk full")

    retrainer._retrain = fail
    retrainer.handle("agrawal", trigger())
    assert retrainer.told[-1].kind == "retrain_rejected"
    assert "disk full" in retrainer.told[-1].evidence["error"]
    retrainer.handle("agrawal", b"{not json")  # unreadable: logged, nothing else
    assert len(retrainer.told) == 1


def test_a_promoted_challenger_records_every_candidate_in_its_lineage(tmp_path, monkeypatch):
    s = Settings().with_overrides(data_dir=tmp_path, namespace="unit")
    registry = Registry(s.registry_uri, s.registry_artifacts, s.namespace)
    live = Retrainer(s, ["fraud"], registry)
    st = live.state["fraud"]
    # The pipeline's model knows only the base rate; the candidate separates the classes.
    st.spec = replace(st.spec, model=dummy.PriorClassifier, candidates=(fraud_logistic,))
    rng = random.Random(3)
    records = []
    for i in range(3000):
        amount = rng.random()
        ex = TrainingExample(event_id=f"e{i}", entity="c", event_time=float(i),
                             features={"amount": amount}, score=0.5, model_version="v1.0",
                             label=amount > 0.7, label_time=i + 1.0)
        records.append(TopicRecord(st.topics.training, 0, i, None, ex.to_json(), float(i)))
    monkeypatch.setattr(retrainer_module, "read_range", lambda *a, **k: records)
    monkeypatch.setattr(live, "_wait_for_offset", lambda topic, need: len(records))
    told = []
    monkeypatch.setattr(lifecycle, "send_control", lambda settings, ev: told.append(ev))
    monkeypatch.setattr(live, "_tell", told.append)
    parent = registry.register("fraud", build_model(fraud_logistic), Lineage(
        reason="bootstrap", evidence={}, spec=model_name(fraud_logistic), declaration={},
        topic=st.topics.training, start_offset=None, end_offset=None, start_time=None,
        end_time=None, examples=0, parent=None), {"roc_auc": 0.5})
    registry.promote("fraud", parent.version)

    live.handle("fraud", ControlEvent(kind="retrain_requested", pipeline="fraud",
                                      at=time.time()).to_json())
    champion = registry.champion("fraud")
    assert champion.version != parent.version and champion.lineage.parent == parent.version
    logistic, prior = model_name(fraud_logistic), model_name(dummy.PriorClassifier)
    assert champion.lineage.spec == logistic
    evidence = champion.lineage.evidence
    assert set(evidence["candidates"]) == {logistic, prior}
    assert evidence["candidates"][logistic]["roc_auc"] > evidence["candidates"][prior]["roc_auc"]
    assert set(evidence["candidate_seconds"]) == {logistic, prior}
    assert [e.kind for e in told] == ["promoted"]
    assert told[0].evidence["candidates"] == evidence["candidates"]
