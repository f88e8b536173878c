"""The proof on a known stream: River's Agrawal loans with an abrupt concept drift, through
Kafka with delayed labels. The learner detects the drift on its error stream, the retrainer
(a process of its own) trains a challenger that beats the champion, registers and promotes
it, the learner swaps it in, and accuracy recovers."""

from __future__ import annotations

import pytest

from benchmarks.concept_drift import run_through_kafka
from driftline.tools.namespaces import scratch_namespace
from online_models.registry import Registry
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

EVENTS = 8000


@pytest.fixture
def own_settings(settings):
    with scratch_namespace(settings, f"{settings.namespace}-drift", worker_port=free_port(),
                           retrainer_port=free_port(), snapshot_every=200) as s:
        yield s


def test_drift_is_detected_a_challenger_promoted_and_accuracy_recovers(own_settings, logs):
    s = own_settings
    proof = run_through_kafka(s, EVENTS, seed=1, rate=200.0, logs=logs / "drift")

    # Detected on the error stream soon after the drift, and only then.
    assert proof.detection_delay is not None, proof.control
    assert 0 < proof.detection_delay < 600
    # A challenger trained after it won and was swapped in with most of the stream left.
    assert proof.promoted_version is not None, proof.control
    assert proof.labels_after_promotion >= 1000
    assert proof.accuracy["before"] > 0.8
    assert proof.accuracy["just_after"] < 0.7
    assert proof.accuracy["after_promotion"] > 0.9
    # The champion alone (River in-process, same stream) was still far behind meanwhile.
    assert proof.river["after_promotion"] < proof.accuracy["after_promotion"] - 0.1

    registry = Registry.from_settings(s)
    champion = registry.champion("agrawal")
    assert champion is not None and champion.version == proof.promoted_version
    lineage = champion.lineage
    assert lineage.reason == "drift"
    assert lineage.evidence["trigger"] == "concept_drift"
    assert lineage.evidence["challenger"]["accuracy"] > lineage.evidence["champion"]["accuracy"]
    parent = registry.get("agrawal", lineage.parent)
    assert parent.lineage.reason == "bootstrap"
    # Its lineage names the data it was trained on.
    assert lineage.start_offset is not None and lineage.end_offset > lineage.start_offset
    assert lineage.examples == 1500
