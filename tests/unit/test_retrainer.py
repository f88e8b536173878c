"""The retrainer's decisions on triggers, with the retrain itself and the control topic
replaced by recorders (the whole path runs for real in tests/integration)."""

from __future__ import annotations

import time

import pytest

from driftline.adapters.config import Settings
from online_models.registry import Registry
from online_models.retrainer import Retrainer
from streams.schemas import ControlEvent


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
