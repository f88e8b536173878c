"""The neighbour feature, computed by the one class the worker and the API share, against
the real Milvus Lite server and Redis."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import numpy as np
import pytest

from driftline.adapters.stores import EmbeddingStore, RedisKeys, connect
from driftline.adapters.vectors import EmbeddingSpace, VectorStore, ensure_collections
from driftline.tools.namespaces import scratch_namespace
from monitoring import metrics
from streams.catalog.fraud import FRAUD
from streams.declarations import EmbeddingPolicy
from streams.embeddings import EventEmbedder
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

SPEC = replace(FRAUD, embeddings=EmbeddingPolicy(features=("amount", "count_1m"), fit_rows=2,
                                                 neighbour_feature="fraud_rate_knn",
                                                 neighbours=5, index="FLAT"))


def lookups(outcome: str) -> float:
    return metrics.NEIGHBOUR_LOOKUPS.labels(pipeline="fraud", process="test",
                                         outcome=outcome)._value.get()


@pytest.fixture
def own(settings):
    with scratch_namespace(settings, f"{settings.namespace}-knn{uuid.uuid4().hex[:4]}") as s:
        ensure_collections(s, SPEC)
        yield s


async def scenario(s) -> None:
    redis = connect(s)
    store = EmbeddingStore(redis, RedisKeys(s.redis_prefix, "fraud"))
    space = EmbeddingSpace(s, SPEC, store, "test")
    features = {"amount": 10.0, "count_1m": 1.0}

    # No embedder published yet: the feature is left out, and the metric says why.
    before = lookups("not_ready")
    await space.add_neighbour_feature(features)
    assert "fraud_rate_knn" not in features and lookups("not_ready") == before + 1

    embedder = EventEmbedder(SPEC)
    embedder.fit_one({"amount": 1.0, "count_1m": 1.0})
    embedder.fit_one({"amount": 100.0, "count_1m": 5.0})
    await store.save(checkpoint={"any": "thing"}, embedder=embedder)
    rng = np.random.default_rng(4)
    points = [{"amount": float(a), "count_1m": float(c)}
              for a, c in zip(rng.uniform(1, 200, 60), rng.integers(1, 8, 60), strict=True)]
    labels = [float(p["amount"] < 20.0) for p in points]  # small amounts are the frauds
    vectors = VectorStore(s, SPEC)
    await vectors.upsert_events([
        {"id": f"e{i}", "vector": embedder.vector(p), "entity": f"c{i}", "label": y,
         "event_time": float(i), "score": 0.0, "model_version": "v0.0", "offset": i}
        for i, (p, y) in enumerate(zip(points, labels, strict=True))])
    await vectors.seal()
    space._checked = float("-inf")  # look for the embedder now rather than in a second

    for query in ({"amount": 3.0, "count_1m": 2.0}, {"amount": 150.0, "count_1m": 6.0}):
        features = dict(query)
        await space.add_neighbour_feature(features)
        q = np.array(embedder.vector(query))
        d = [float(((np.array(embedder.vector(p)) - q) ** 2).sum()) for p in points]
        nearest = np.argsort(d)[:5]
        assert features["fraud_rate_knn"] == pytest.approx(np.mean([labels[i] for i in nearest]))
    await vectors.close()
    await space.close()

    # Milvus unreachable: scoring goes on without the feature, within the time budget.
    gone = s.with_overrides(milvus_uri=f"http://127.0.0.1:{free_port()}",
                            neighbour_timeout_seconds=0.3)
    dead = EmbeddingSpace(gone, SPEC, store, "test")
    failed = lookups("timeout") + lookups("error")
    features = {"amount": 3.0, "count_1m": 2.0}
    loop = asyncio.get_running_loop()
    started = loop.time()
    await dead.add_neighbour_feature(features)
    assert loop.time() - started < 2.0
    assert "fraud_rate_knn" not in features
    assert lookups("timeout") + lookups("error") == failed + 1
    await redis.aclose()


def test_the_neighbour_feature_is_the_label_rate_of_the_k_nearest_labeled_events(own):
    asyncio.run(scenario(own))
