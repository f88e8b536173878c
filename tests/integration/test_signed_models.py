"""Models are signed in Redis: a pickle planted in the snapshot hash by whoever can write
Redis (unsigned, or signed but naming ``os.system``) is refused by the API, counted and
logged, runs nothing, and scoring goes on with the model the API had.

An API process of the module's own, in a namespace of its own (no worker: the snapshot is
published here, as a learner would)."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
import uuid

import pytest
import redis

from driftline.adapters.signing import model_key, sign
from driftline.adapters.stores import RedisKeys, SnapshotStore, connect
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import api_process, api_url
from monitoring.scrape import scrape
from online_models.spec import build_model
from streams.catalog.fraud import FRAUD
from tests.integration.conftest import call

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(settings):
    with scratch_namespace(settings, f"{settings.namespace}-signed", api_port=free_port(),
                           model_refresh_seconds=0.2) as s:
        yield s


@pytest.fixture(scope="module")
def published(settings):
    """A fraud model that has learned a little, published as the learner would."""
    model = build_model(FRAUD.model)
    for i in range(50):
        model.learn_one({"amount": float(i % 17), "hour": float(i % 24)}, i % 5 == 0)

    async def publish() -> None:
        client = connect(settings)
        try:
            await SnapshotStore(client, RedisKeys(settings.redis_prefix, "fraud")).publish(
                model, "v0.50")
        finally:
            await client.aclose()

    asyncio.run(publish())
    return "v0.50"


@pytest.fixture(scope="module")
def server(settings, published):
    proc = api_process(settings, settings.data_dir / "test-logs" / settings.namespace).start()
    yield api_url(settings)
    proc.stop()


class Planted:
    """Writes a marker file if it is ever unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def score(url: str) -> tuple[int, dict]:
    return call(f"{url}/v1/score/fraud", {
        "event_id": f"signed-{uuid.uuid4().hex}", "card_id": "c-signed", "merchant_id": "m-1",
        "amount": 42.0, "ts": time.time()})


def refused(url: str) -> float:
    return scrape(f"{url}/metrics").value("driftline_blobs_refused_total", store="snapshot")


def test_a_planted_pickle_is_refused_and_scoring_goes_on_with_the_old_model(
        settings, published, server, tmp_path):
    status, answer = score(server)
    assert status == 200, answer
    assert answer["model_version"] == published
    before = refused(server)

    marker = tmp_path / "planted-ran"
    client = redis.Redis.from_url(settings.redis_url)
    key = RedisKeys(settings.redis_prefix, "fraud").model
    other = build_model(FRAUD.model)
    plants = [
        ("v9.0", pickle.dumps(other)),                     # a model, but unsigned
        ("v9.1", pickle.dumps(Planted(str(marker)))),      # unsigned, and would run code
        ("v9.2", sign(Planted(str(marker)), model_key(settings))),  # signed, runs code
    ]
    try:
        for i, (version, blob) in enumerate(plants, 1):
            client.hset(key, mapping={"blob": blob, "version": version,
                                      "published_at": repr(time.time()),
                                      "id": uuid.uuid4().hex})
            client.hdel(key, "fallback")
            deadline = time.monotonic() + 15
            while refused(server) < before + i and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(5 * settings.model_refresh_seconds)  # several refreshes past it
            status, answer = score(server)
            assert status == 200, answer
            assert answer["model_version"] == published, (version, answer)
            assert not marker.exists()
            assert refused(server) == before + i, version  # counted once, not per refresh
    finally:
        client.close()
    status, health = call(f"{server}/healthz", method="GET")
    assert health["models"]["fraud"] == published, health
    log = (settings.data_dir / "test-logs" / settings.namespace / "api.log").read_text()
    assert "refused the snapshot version v9.0" in log
    assert "refused the snapshot version v9.2" in log
