"""The pricing pipeline (a regression) end to end: the same agents and API as fraud,
driven only by its declaration."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

import pytest
import redis

from driftline.adapters.kafka_admin import ensure_pipeline_topics
from driftline.adapters.stores import RedisKeys, SnapshotStore, connect
from online_models.spec import predict
from streams.catalog.pricing import PRICING
from streams.generators.pricing import PricingGenerator, PricingStreamConfig
from streams.parity import recompute
from streams.topics import PipelineTopics
from tests.integration.conftest import read_all, send, wait_for
from tests.integration.test_fraud_pipeline import post


def published_version(settings) -> str | None:
    raw = redis.Redis.from_url(settings.redis_url).hget(
        RedisKeys(settings.redis_prefix, "pricing").model, "version")
    return raw.decode() if raw else None


async def load_snapshot(settings):
    client = connect(settings)
    try:
        return await SnapshotStore(client, RedisKeys(settings.redis_prefix, "pricing")).load()
    finally:
        await client.aclose()

pytestmark = pytest.mark.integration

N = 2000


def test_pricing_learns_prices_and_serves_them(settings, worker, worker_metrics, api):
    ensure_pipeline_topics(settings, "pricing")
    topics = PipelineTopics.for_spec(PRICING, settings.namespace)
    run_id = uuid.uuid4().hex[:8]
    config = PricingStreamConfig(events=N, seed=2, run_id=run_id, drift_at=None,
                                 start_time=time.time() - N / 2.0)
    stream = list(PricingGenerator(config).emissions())
    # Zones of their own, so that no other test's events are in their windows.
    records = []
    for e in stream:
        record = e.record
        if e.kind == "event":
            record = record.model_copy(update={"zone_id": f"{run_id}-{record.zone_id}"})
        records.append((e.kind, record))
    send(settings, topics.events, [(r.zone_id, r.to_json()) for k, r in records if k == "event"])
    send(settings, topics.labels, [(r.event_id, r.to_json()) for k, r in records if k == "label"])

    def learned() -> float:
        return worker_metrics().value("driftline_labels_learned_total", pipeline="pricing")

    wait_for(lambda: learned() >= N, 180, "every price learned")
    m = worker_metrics()
    mae = m.value("driftline_prequential_metric", pipeline="pricing", metric="mae")
    rmse = m.value("driftline_prequential_metric", pipeline="pricing", metric="rmse")
    assert 0 < mae <= rmse

    examples = read_all(settings, topics.training)
    assert len(examples) == N
    # The published model prices the last rides better than their mean price would.
    wait_for(lambda: published_version(settings) == f"v0.{N}", 30, "the final snapshot")
    snap = asyncio.run(load_snapshot(settings))
    recent = examples[-500:]
    mean = statistics.fmean(e["label"] for e in recent)
    naive = statistics.fmean(abs(e["label"] - mean) for e in recent)
    model_mae = statistics.fmean(
        abs(e["label"] - predict(snap.model, "regression", e["features"])) for e in recent)
    assert model_mae < 0.8 * naive
    assert all(isinstance(e["label"], float) for e in examples)
    offline = recompute(PRICING, [r for k, r in records if k == "event"])
    assert all(e["features"] == offline[e["event_id"]] for e in examples)

    zone = f"{run_id}-zone-03"
    ride = {"event_id": f"{run_id}-q", "zone_id": zone, "distance_km": 5.0,
            "duration_min": 15.0, "active_drivers": 20, "ts": time.time()}
    body = post(f"{api}/v1/score/pricing", ride, 200)
    assert body["entity_known"] and body["prediction"] > 0
    assert "probability" not in body
    assert set(body["features"]) == set(PRICING.feature_names)
    bad = post(f"{api}/v1/score/pricing", {**ride, "active_drivers": 2.5}, 422)
    assert list(bad["fields"]) == ["active_drivers"]
