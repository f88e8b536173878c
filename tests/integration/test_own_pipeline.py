"""A user's own pipeline, declared in a module outside Driftline (a file in a temporary
directory, named by DRIFTLINE_PIPELINES; nothing in Driftline's package edited): its own
event and label shapes, with JSON field names that are not Python identifiers (``payment-id``,
``amount-eur``, ``1``), its own model factory, its own topics. Its events and labels go to
those topics; the worker and the API run on it; every label is learned, once, and the API
scores with the model that learned them."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from driftline.adapters.kafka_admin import ensure_pipeline_topics
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import api_process, worker_process
from monitoring.scrape import scrape
from streams.pipelines import ENVIRONMENT, PIPELINES
from streams.topics import PipelineTopics
from tests.integration.conftest import TOKENS, call, read_all, send, wait_for

pytestmark = pytest.mark.integration

N = 600
MODULE = '''
"""Payments of a team of its own: not a line of Driftline edited."""
from pydantic import Field
from river import compose, linear_model, optim, preprocessing

from streams.declarations import Agg, FallbackPolicy, PipelineSpec, Raw, Sliding
from streams.schemas import Record


class Payment(Record):
    payment_id: str = Field(alias="payment-id", min_length=1)
    account: str = Field(min_length=1)
    amount_eur: float = Field(alias="amount-eur", gt=0, allow_inf_nan=False)
    channel: float = Field(alias="1", ge=0, le=1)  # a field named "1": 1.0 online
    at: float = Field(gt=0)


class Outcome(Record):
    payment_id: str = Field(alias="payment-id", min_length=1)
    disputed: bool
    at: float = Field(gt=0)


def payments_model():
    return compose.Pipeline(preprocessing.StandardScaler(),
                            linear_model.LogisticRegression(optimizer=optim.SGD(0.05)))


PAYMENTS = PipelineSpec(
    name="{name}", event_type=Payment, entity_field="account", time_field="at",
    event_id_field="payment-id", label_type=Outcome, label_field="disputed",
    label_time_field="at", task="binary", model=payments_model,
    metrics=("roc_auc", "log_loss"),
    events_topic="{events}", labels_topic="{labels}",
    features=(
        Raw("amount-eur"),
        Raw("1"),
        Agg("payments-10m", "count", Sliding(600.0)),
        Agg("eur-10m", "sum", Sliding(600.0), field="amount-eur"),
    ),
    fallback=FallbackPolicy(features=("amount-eur", "1"), prior=0.1, min_examples=50),
)
'''


@pytest.fixture(scope="module")
def own(settings, tmp_path_factory):
    """The module file, the settings naming it, and the pipeline as the test process loads
    it (the worker and the API load it from DRIFTLINE_PIPELINES, as a user's would)."""
    run = uuid.uuid4().hex[:6]
    name = f"payments_{run}"
    namespace = f"{settings.namespace}-own"
    path = tmp_path_factory.mktemp("user-project") / "payments_feed.py"
    path.write_text(MODULE.replace("{name}", name)
                    .replace("{events}", f"{namespace}.payments-in")
                    .replace("{labels}", f"{namespace}.disputes-in"))
    before = os.environ.get(ENVIRONMENT)
    os.environ[ENVIRONMENT] = str(path)
    PIPELINES.reload()
    try:
        with scratch_namespace(settings, namespace, pipelines=str(path),
                               worker_port=free_port(), api_port=free_port()) as scoped:
            ensure_pipeline_topics(scoped, name)
            yield scoped, PIPELINES[name]
    finally:
        if before is None:
            os.environ.pop(ENVIRONMENT, None)
        else:
            os.environ[ENVIRONMENT] = before
        PIPELINES.reload()


def test_a_pipeline_declared_outside_driftline_learns_every_label_and_is_served(own, logs):
    scoped, spec = own
    assert spec.event_type.__module__.startswith("driftline_pipelines_payments_feed_")
    topics = PipelineTopics.for_spec(spec, scoped.namespace)
    assert (topics.events, topics.labels) == (f"{scoped.namespace}.payments-in",
                                              f"{scoped.namespace}.disputes-in")
    worker = worker_process(scoped, logs, [spec.name]).start()
    api = api_process(scoped, logs).start()
    try:
        now = time.time() - N
        events, labels = [], []
        for i in range(N):
            account = f"acct-{i % 20}"
            online = float(i % 3 == 0)
            amount = 20.0 + (i % 7) * 10 + (400.0 if online and i % 2 else 0.0)
            events.append((account, json.dumps({
                "payment-id": f"p{i}", "account": account, "amount-eur": amount,
                "1": online, "at": now + i}).encode()))
            labels.append((f"p{i}", json.dumps({
                "payment-id": f"p{i}", "disputed": amount > 300, "at": now + i + 0.5}).encode()))
        send(scoped, topics.events, events)
        send(scoped, topics.labels, labels)
        metrics = f"http://127.0.0.1:{scoped.worker_port}/metrics"

        def learned() -> float:
            return scrape(metrics).value("driftline_labels_learned_total", pipeline=spec.name)

        wait_for(lambda: learned() >= N, 180, "every label learned")
        examples = read_all(scoped, topics.training)
        assert sorted(e["event_id"] for e in examples) == sorted(f"p{i}" for i in range(N))
        assert set(examples[0]["features"]) == {"amount-eur", "1", "payments-10m", "eur-10m"}
        assert learned() == N  # each once

        base = f"http://{scoped.api_host}:{scoped.api_port}"
        wait_for(lambda: call(f"{base}/healthz")[1]["models"].get(spec.name) == f"v0.{N}",
                 60, "the API serving the model of every label")
        query = {"payment-id": "q1", "account": "acct-3", "amount-eur": 500.0, "1": 1.0,
                 "at": time.time()}
        status, score = call(f"{base}/v1/score/{spec.name}", query, token=TOKENS["scorer"])
        assert status == 200, score
        assert score["model_version"] == f"v0.{N}" and not score["degraded"]
        assert score["event_id"] == "q1" and score["entity"] == "acct-3"
        assert score["features"]["amount-eur"] == 500.0 and score["entity_known"]
        small = call(f"{base}/v1/score/{spec.name}", {**query, "amount-eur": 20.0, "1": 0.0},
                     token=TOKENS["scorer"])[1]
        assert score["probability"] > small["probability"]  # it learned what disputes are
        status, bad = call(f"{base}/v1/score/{spec.name}", {**query, "amount-eur": -1},
                           token=TOKENS["scorer"])
        assert status == 422 and list(bad["fields"]) == ["amount-eur"]
        doc = call(f"{base}/openapi.json")[1]
        assert f"/v1/score/{spec.name}" in doc["paths"]
    finally:
        api.stop()
        worker.stop()
