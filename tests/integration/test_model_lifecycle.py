"""The model lifecycle against the real worker, API, Kafka, Redis and MLflow registry:
promotions and rollbacks through the admin endpoints hot-swap the model in every scoring
process, with no failed request while scores are being served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from online_models.registry import Lineage, Registry
from online_models.spec import build_model
from streams.catalog.fraud import FRAUD
from tests.integration.conftest import call, wait_for

pytestmark = pytest.mark.integration


def register(settings, bias: float) -> int:
    """A model version whose scores are recognisably its own (all near ``bias``)."""
    model = build_model(FRAUD.model)
    for i in range(300):
        model.learn_one({"amount": 1.0}, (i % 100) < bias * 100)
    lineage = Lineage(reason="manual", evidence={"requested_by": "test"}, spec=FRAUD.model,
                      declaration=FRAUD.describe(), topic="t", start_offset=None,
                      end_offset=None, start_time=None, end_time=None, examples=300,
                      parent=None)
    registry = Registry.from_settings(settings)
    return registry.register("fraud", model, lineage, {"roc_auc": 0.5}).version


def test_promotion_and_rollback_swap_models_with_no_failed_request(settings, api, worker):
    status, body = call(f"{api}/v1/models/fraud/rollback", method="POST")
    assert status == 409 and "roll back" in body["error"]
    assert call(f"{api}/v1/models/nope")[0] == 404

    first, second = register(settings, 0.1), register(settings, 0.9)
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def score_continuously() -> None:
        while not stop.is_set():
            event = {"event_id": uuid.uuid4().hex, "card_id": "swap-card", "merchant_id": "m1",
                     "amount": 1.0, "ts": time.time()}
            status, body = call(f"{api}/v1/score/fraud", event)
            results.append((status, body.get("model_version", "")))

    threads = [threading.Thread(target=score_continuously) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for version in (first, second):
            status, body = call(f"{api}/v1/models/fraud/promote", {"version": version})
            assert status == 202 and body["champion"]["version"] == version
            wait_for(lambda v=version: results and results[-1][1].startswith(f"v{v}."), 60,
                     f"the API serving registry version {version}")
        status, body = call(f"{api}/v1/models/fraud/rollback", method="POST")
        assert status == 202 and body["champion"]["version"] == first
        wait_for(lambda: results[-1][1].startswith(f"v{first}."), 60, "the rollback served")
    finally:
        stop.set()
        for t in threads:
            t.join()

    statuses = {s for s, _ in results}
    assert statuses == {200}, f"failed requests across the swaps: {statuses}"
    served = [v.partition(".")[0] for _, v in results]
    # Every swap happened while requests were in flight, in order.
    changes = [v for i, v in enumerate(served) if i == 0 or v != served[i - 1]]
    assert changes[-3:] == [f"v{first}", f"v{second}", f"v{first}"]

    status, body = call(f"{api}/v1/models/fraud")
    assert status == 200
    assert body["serving"]["version"].startswith(f"v{first}.")
    assert body["registry"]["champion"] == first
    assert [v["version"] for v in body["registry"]["versions"]][:2] == [second, first]
    assert body["learner"]["revision"] == str(first)


def test_a_champion_moved_without_a_control_event_is_served_after_reconciliation(
        settings, api, worker):
    version = register(settings, 0.3)
    # As if the promotion's control event were lost: only the registry knows.
    Registry.from_settings(settings).promote("fraud", version)

    def served() -> str:
        event = {"event_id": uuid.uuid4().hex, "card_id": "reconcile-card",
                 "merchant_id": "m1", "amount": 1.0, "ts": time.time()}
        return call(f"{api}/v1/score/fraud", event)[1]["model_version"]

    wait_for(lambda: served().startswith(f"v{version}."), 60,
             f"the reconciled champion v{version} served")



def test_the_cli_lists_the_registry_and_refuses_an_unknown_version(settings):
    version = register(settings, 0.5)
    env = {**os.environ, **settings.to_env()}
    listed = subprocess.run([sys.executable, "-m", "driftline", "models", "list", "fraud",
                             "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    versions = json.loads(listed.stdout)
    assert version in [v["version"] for v in versions]
    assert all(v["pipeline"] == "fraud" for v in versions)
    assert sum(v["champion"] for v in versions) <= 1
    refused = subprocess.run([sys.executable, "-m", "driftline", "models", "promote", "fraud",
                              "999"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "999" in refused.stderr
