"""Fixtures that run the real thing: the local Kafka broker and Redis (brought up when they
are not), and the worker and API as child processes in a namespace of their own, so a
test run shares nothing with a demo or another run on the same stack."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable

import pytest
import redis
from confluent_kafka import Producer

from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import ensure_pipeline_topics
from driftline.adapters.kafka_clients import client_config
from driftline.adapters.stores import RedisKeys, learner_status
from driftline.adapters.topic_reader import read_topic
from driftline.adapters.vectors import blocking_client
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import api_process, worker_process
from driftline.tools.stack import LocalStack
from monitoring.scrape import scrape
from serving.auth import new_token
from streams.catalog.fraud import FRAUD
from streams.topics import PipelineTopics

# The session API's tokens, one per role: its configuration holds only their hashes.
_MINTED = {role: new_token(f"test-{role}", role) for role in ("scorer", "admin")}
TOKENS = {role: token for role, (token, _) in _MINTED.items()}
TOKEN_ENTRIES = ",".join(entry for _, entry in _MINTED.values())


@pytest.fixture(scope="session")
def settings(tmp_path_factory) -> Settings:
    LocalStack(Settings.from_env()).up()  # a no-op when `make test` brought it up already
    # Read again: the first `up` writes the secrets (Redis's password) the clients need.
    base = Settings.from_env()
    # The namespace is removed after the worker and API fixtures have stopped (they
    # depend on this one).
    with scratch_namespace(base, f"t{uuid.uuid4().hex[:8]}",
                           worker_port=free_port(),
                           api_port=free_port(),
                           snapshot_every=50,
                           snapshot_seconds=0.5,
                           model_refresh_seconds=0.2,
                           reconcile_seconds=2.0,
                           api_tokens=TOKEN_ENTRIES) as s:
        ensure_pipeline_topics(s, "fraud")
        yield s


@pytest.fixture(scope="session")
def topics(settings) -> PipelineTopics:
    return PipelineTopics.for_spec(FRAUD, settings.namespace)


@pytest.fixture(scope="session")
def logs(settings, tmp_path_factory):
    path = settings.data_dir / "test-logs" / settings.namespace
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def worker(settings, logs):
    proc = worker_process(settings, logs).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def api(settings, logs, worker):
    proc = api_process(settings, logs).start()
    yield f"http://{settings.api_host}:{settings.api_port}"
    proc.stop()


@pytest.fixture(scope="session")
def worker_metrics(settings, worker) -> Callable:
    return lambda: scrape(f"http://127.0.0.1:{settings.worker_port}/metrics")


def own_namespace(suffix: str, pipelines: list[str]) -> tuple:
    """Module-scoped ``settings``, ``logs``, ``worker``, ``api`` and ``worker_metrics`` in a
    namespace of the module's own, for a module whose records or admin actions the
    session's later tests must not see. Assign them to those names in the module::

        settings, logs, worker, api, worker_metrics = own_namespace("dash", ["fraud"])
    """
    @pytest.fixture(scope="module", name="settings")
    def module_settings(settings):
        with scratch_namespace(settings, f"{settings.namespace}-{suffix}",
                               worker_port=free_port(), api_port=free_port()) as s:
            for pipeline in pipelines:
                ensure_pipeline_topics(s, pipeline)
            yield s

    @pytest.fixture(scope="module", name="logs")
    def module_logs(settings):
        path = settings.data_dir / "test-logs" / settings.namespace
        path.mkdir(parents=True, exist_ok=True)
        return path

    @pytest.fixture(scope="module", name="worker")
    def module_worker(settings, logs):
        proc = worker_process(settings, logs, pipelines).start()
        yield proc
        proc.stop()

    @pytest.fixture(scope="module", name="api")
    def module_api(settings, logs, worker):
        proc = api_process(settings, logs).start()
        yield f"http://{settings.api_host}:{settings.api_port}"
        proc.stop()

    @pytest.fixture(scope="module", name="worker_metrics")
    def module_worker_metrics(settings, worker):
        return lambda: scrape(f"http://127.0.0.1:{settings.worker_port}/metrics")

    return module_settings, module_logs, module_worker, module_api, module_worker_metrics


def send(settings: Settings, topic: str, records: Iterable[tuple[str | None, bytes]]) -> int:
    producer = Producer({**client_config(settings), "linger.ms": 5})
    n = 0
    for key, value in records:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
        n += 1
    assert producer.flush(30) == 0
    return n


def read_all(settings: Settings, topic: str, timeout: float = 30.0) -> list[dict]:
    """Every record of ``topic`` up to its current end, decoded from JSON."""
    return [json.loads(r.value) for r in read_topic(settings, topic, timeout)]


def redis_features(settings: Settings, pipeline: str, entities) -> dict[str, dict]:
    """Each entity's features as the feature store holds them (its ``_``-fields left out)."""
    client = redis.Redis.from_url(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix, pipeline)
    out = {}
    for entity in entities:
        raw = client.hgetall(keys.features(entity))
        out[entity] = {k.decode(): float(v) for k, v in raw.items() if not k.startswith(b"_")}
    client.close()
    return out


def learner_state(settings: Settings, pipeline: str = "fraud") -> dict[str, str]:
    """The learner's status in Redis (written by whichever worker leads)."""
    return learner_status(settings, pipeline)


def call(url: str, payload: dict | bytes | None = None, method: str | None = None,
         token: str | None = TOKENS["admin"], context=None) -> tuple[int, dict]:
    """An HTTP request with a JSON (or raw) body, as the admin unless ``token`` says
    otherwise (None: no token); the status and the decoded JSON answer."""
    data = payload if isinstance(payload, bytes | None) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def milvus_rows(settings: Settings, collection: str, flt: str, fields: list[str]
                ) -> list[dict]:
    """Rows of a Milvus collection that match ``flt``, read strongly."""
    client = blocking_client(settings)
    try:
        return client.query(collection, filter=flt, output_fields=fields, limit=16384,
                            consistency_level="Strong")
    finally:
        client.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
