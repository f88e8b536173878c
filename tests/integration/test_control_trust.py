"""The control topic is not trusted, against the real worker, Kafka, Redis and registry: a
``promoted`` event naming a version the registry does not hold (anyone who can produce
can send one) is dead-lettered with the reason, and the learner keeps serving the model
it served.

The worker runs in a namespace of this module's own: its registry versions, dead letters
and promotions are its own.
"""

from __future__ import annotations

import time

import pytest

from online_models import lifecycle
from online_models.registry import Lineage, Registry
from online_models.spec import build_model
from streams.catalog.fraud import FRAUD
from streams.schemas import ControlEvent
from streams.topics import PipelineTopics
from tests.integration.conftest import (
    learner_state,
    own_namespace,
    read_all,
    send,
    wait_for,
)

pytestmark = pytest.mark.integration

settings, logs, worker, api, worker_metrics = own_namespace("trust", ["fraud"])


def _register(settings) -> int:
    model = build_model(FRAUD.model)
    for i in range(100):
        model.learn_one({"amount": float(i)}, i % 7 == 0)
    lineage = Lineage(reason="manual", evidence={"requested_by": "test"}, spec=FRAUD.model,
                      declaration=FRAUD.describe(), topic="t", start_offset=None,
                      end_offset=None, start_time=None, end_time=None, examples=100,
                      parent=None)
    return Registry.from_settings(settings).register("fraud", model, lineage,
                                                     {"roc_auc": 0.5}).version


def _revision(settings) -> str | None:
    return learner_state(settings).get("revision")


def test_a_promotion_of_an_unknown_version_is_dead_lettered(settings, worker, worker_metrics):
    topics = PipelineTopics.for_spec(FRAUD, settings.namespace)
    registry = Registry.from_settings(settings)
    # A real promotion first: the learner serves a registered version.
    served = _register(settings)
    lifecycle.promote(settings, registry, "fraud", served, reason="manual")
    wait_for(lambda: _revision(settings) == str(served), 90,
             f"the learner serving registry version {served}")

    # A producer's forged promotion of a version that does not exist.
    unknown = served + 1000
    forged = ControlEvent(kind="promoted", pipeline="fraud", at=time.time(),
                          registry_version=unknown, reason="manual")
    send(settings, topics.control, [("fraud", forged.to_json())])

    def letters() -> list[dict]:
        return [d for d in read_all(settings, topics.deadletter)
                if d["source_topic"] == topics.control]

    wait_for(letters, 60, "the forged promotion on the dead-letter topic")
    [letter] = letters()
    assert f"no registry version {unknown}" in letter["error"]
    assert letter["fields"] == ["registry_version"]
    assert f'"registry_version":{unknown}' in letter["value"].replace(" ", "")

    # The learner kept its model: the event was handled (dead-lettered) and nothing swapped.
    state = learner_state(settings)
    assert state["revision"] == str(served)
    assert state["version"].startswith(f"v{served}.")
    assert worker_metrics().value("driftline_deadletters_total", pipeline="fraud",
                                  reason="invalid_control") == 1.0
    assert worker_metrics().value("driftline_model_promotions_total", pipeline="fraud") == 1.0
    assert registry.champion("fraud").version == served
