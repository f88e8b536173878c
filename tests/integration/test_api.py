"""The scoring API in its production shape, against the real Redis and MLflow registry: a pool
of two processes on one port, bearer tokens with roles, batch scoring, explanations, the
caches and a hot swap, traffic splits, deadlines and the fallback through a slow and a
stopped Redis, and TLS.

The module seeds a namespace of its own (window states and a model learned from a
generated history, :mod:`driftline.tools.seeding`), so no stream worker is needed."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import redis

from driftline.adapters.config import Settings
from driftline.adapters.stores import RedisKeys, SnapshotStore, connect
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import api_process, api_url
from driftline.tools.seeding import seed
from driftline.tools.stack import LocalStack
from monitoring.scrape import scrape
from online_models.explain import contributions
from online_models.registry import Lineage, Registry
from online_models.spec import build_model, predict
from streams.catalog.fraud import FRAUD, Transaction
from streams.engine import FeatureEngine
from tests.integration.conftest import TOKENS, call, wait_for

pytestmark = pytest.mark.integration

BATCH_MAX = 50


@pytest.fixture(scope="module")
def settings(settings):
    with scratch_namespace(settings, f"{settings.namespace}-api", api_port=free_port(),
                           api_batch_max=BATCH_MAX) as s:
        yield s


@pytest.fixture(scope="module")
def seeded(settings):
    return seed(settings, FRAUD, events=3000, now=time.time())


@pytest.fixture(scope="module")
def pool(settings, seeded):
    """``driftline serve --workers 2``: a supervisor and two API processes on one port."""
    proc = api_process(settings, settings.data_dir / "test-logs" / settings.namespace,
                       workers=2).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def api(settings, pool):
    return api_url(settings)


def event(seeded, i: int = 0, **changes) -> dict:
    """A new payment of a known card: the seeded history's i-th card from the end."""
    last = seeded.events[-1 - i]
    return {**last.model_dump(), "event_id": f"api-{i}-{time.monotonic_ns()}",
            "ts": last.ts + 1.0, **changes}


def score(api: str, body: dict, token: str = TOKENS["scorer"]) -> dict:
    status, answer = call(f"{api}/v1/score/fraud", body, token=token)
    assert status == 200, answer
    return answer


def metrics(api: str):
    return scrape(f"{api}/metrics")


def children(pid: int) -> list[int]:
    """The live API processes of a pool."""
    out = subprocess.run(["ps", "-o", "pid=,stat=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "Z" not in line.split()[1]]


# ---- authentication -----------------------------------------------------------------------

def test_tokens_and_roles(api, seeded):
    body = event(seeded)
    status, answer = call(f"{api}/v1/score/fraud", body, token=None)
    assert status == 401 and answer["fields"] == {"Authorization": "missing"}
    status, answer = call(f"{api}/v1/score/fraud", body, token="dl_not-a-token")
    assert status == 401 and answer["fields"] == {"Authorization": "unknown token"}
    raw = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          "-H", "Authorization: Bearer \xff\xfe", f"{api}/v1/score/fraud"],
                         capture_output=True, text=True).stdout
    assert raw == "401"  # undecodable bytes are an unknown token, not a 500
    assert score(api, body)["pipeline"] == "fraud"  # the scorer role scores
    card = urllib.parse.quote(body["card_id"], safe="")
    for method, path, payload in (("DELETE", f"/v1/entities/fraud/{card}", None),
                                  ("POST", "/v1/models/fraud/rollback", b"{}"),
                                  ("PUT", "/v1/models/fraud/traffic",
                                   {"mode": "shadow", "challenger": 1})):
        status, answer = call(f"{api}{path}", payload, method=method, token=TOKENS["scorer"])
        assert status == 403, (path, answer)
        assert "admin" in answer["error"]
    for path in ("/healthz", "/metrics", "/openapi.json"):  # open by default
        with urllib.request.urlopen(f"{api}{path}", timeout=10) as resp:  # no token
            assert resp.status == 200, path
    refused = metrics(api)
    assert refused.value("driftline_api_auth_failures_total", status="401") >= 2
    assert refused.value("driftline_api_auth_failures_total", status="403") >= 3


# ---- scoring, explanations, batch -------------------------------------------------------

def test_a_score_is_the_models_and_explains_itself(settings, api, seeded):
    answer = score(api, event(seeded))
    model = seeded.learner.model
    assert answer["variant"] == "champion" and not answer["degraded"]
    assert answer["model_version"] == seeded.learner.version
    assert answer["entity_known"] is True
    assert answer["prediction"] == pytest.approx(predict(model, "binary", answer["features"]))
    explained = answer["contributions"]
    assert len(explained) == settings.api_explain_top
    sizes = [abs(c["contribution"]) for c in explained]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0
    expected = contributions(model, "binary", answer["features"], settings.api_explain_top)
    assert [c["feature"] for c in explained] == [c.feature for c in expected]
    for c in explained:
        assert c["value"] == answer["features"][c["feature"]]


def test_a_batch_scores_each_event_as_a_single_request_would(api, seeded):
    events = [event(seeded, i) for i in range(20)]
    status, answer = call(f"{api}/v1/score/fraud:batch", {"events": events},
                          token=TOKENS["scorer"])
    assert status == 200, answer
    assert [r["event_id"] for r in answer["results"]] == [e["event_id"] for e in events]
    assert answer["degraded"] is False
    engine = FeatureEngine(FRAUD)
    model = seeded.learner.model
    for e, r in zip(events, answer["results"], strict=True):
        # The card's stored state, the worker's own features, the seeded model.
        expected = engine.features_for(seeded.states[e["card_id"]], Transaction(**e))
        assert r["features"] == pytest.approx(expected)
        assert r["prediction"] == pytest.approx(predict(model, "binary", expected))
        assert [c["feature"] for c in r["contributions"]] == [
            c.feature for c in contributions(model, "binary", expected, 5)]
    status, lean = call(f"{api}/v1/score/fraud:batch?explain=false", {"events": events[:3]},
                        token=TOKENS["scorer"])
    assert status == 200 and all(r["contributions"] == [] for r in lean["results"])
    assert call(f"{api}/v1/score/fraud?explain=maybe", events[0])[1]["fields"] == {
        "explain": "true or false"}


def test_a_batch_is_validated_whole(api, seeded):
    url = f"{api}/v1/score/fraud:batch"
    bad = [event(seeded, i) for i in range(6)]
    bad[3]["amount"] = -2.0
    bad[5] = "not an event"
    status, answer = call(url, {"events": bad})
    assert status == 422
    assert answer["fields"] == {"events.3.amount": "Input should be greater than 0",
                                "events.5": "expected a JSON object, got str"}
    status, answer = call(url, {"events": [event(seeded, i) for i in range(BATCH_MAX + 1)]})
    assert status == 413 and answer["fields"] == {"events": f"at most {BATCH_MAX} events "
                                                            f"per batch"}
    assert call(url, {"events": []})[0] == 422
    assert call(url, [event(seeded)])[0] == 422
    assert call(f"{api}/v1/score/nope:batch", {"events": [event(seeded)]})[0] == 404


# ---- caches and hot swaps -----------------------------------------------------------------

def test_identical_requests_hit_the_caches_and_a_swap_is_never_stale(settings, api, seeded):
    before = metrics(api)
    body = event(seeded)
    answers = [score(api, body) for _ in range(6)]
    assert len({a["prediction"] for a in answers}) == 1
    after = metrics(api)

    def hits(scraped, cache):
        return scraped.value("driftline_api_cache_lookups_total", cache=cache, result="hit")

    # Two processes answer: each may miss once, every later request hits.
    assert hits(after, "inference") - hits(before, "inference") >= 4
    assert hits(after, "features") - hits(before, "features") >= 1
    ratios = dict((labels["cache"], v) for labels, v in after["driftline_api_cache_hit_ratio"])
    assert 0 < ratios["inference"] <= 1 and 0 < ratios["features"] <= 1

    # A new snapshot: the same request is answered by the new model, never from the cache.
    model = copy.deepcopy(seeded.learner.model)
    for ex_features in list(seeded.features.values())[:50]:
        model.learn_one(ex_features, True)  # a different model
    version = seeded.learner.version + "-swap"

    def swap(to):
        async def publish():
            client = connect(settings)
            await SnapshotStore(client, RedisKeys(settings.redis_prefix, "fraud")).publish(
                to, version, fallback=seeded.learner.fallback,
                fallback_examples=seeded.learner.fallback_examples)
            await client.aclose()
        asyncio.run(publish())
        expected = predict(to, "binary", answers[0]["features"])
        wait_for(lambda: all(score(api, body)["prediction"] == pytest.approx(expected)
                             for _ in range(6)), 10, "both processes to serve the new snapshot")
        return score(api, body)

    swapped = swap(model)
    assert swapped["model_version"] == version
    assert swapped["prediction"] != answers[0]["prediction"]
    # Another model under the same version string (as a rollback may publish): served too.
    other = copy.deepcopy(model)
    for ex_features in list(seeded.features.values())[:50]:
        other.learn_one(ex_features, False)
    again = swap(other)
    assert again["model_version"] == version
    assert again["prediction"] != swapped["prediction"]


# ---- champion and challenger -------------------------------------------------------------

@pytest.fixture(scope="module")
def challenger(settings, seeded):
    """A registry version unlike the champion: a fresh model that learned 200 examples."""
    model = build_model(FRAUD.model)
    for i, features in enumerate(list(seeded.features.values())[:200]):
        model.learn_one(features, i % 3 == 0)
    lineage = Lineage(reason="manual", evidence={}, spec=FRAUD.model,
                      declaration=FRAUD.describe(), topic="", start_offset=None,
                      end_offset=None, start_time=None, end_time=None, examples=200,
                      parent=None)
    return Registry.from_settings(settings).register("fraud", model, lineage, {}).version


def _split(api, **body):
    return call(f"{api}/v1/models/fraud/traffic", body, method="PUT")


def test_a_split_serves_the_challenger_to_a_stable_share_of_entities(settings, api, seeded,
                                                                   challenger):
    cards = list(dict.fromkeys(e.card_id for e in reversed(seeded.events)))[:40]
    bodies = [{**event(seeded), "card_id": c} for c in cards]
    # Every process picks a change up within DRIFTLINE_MODEL_REFRESH_SECONDS.
    settle = 2 * settings.model_refresh_seconds + 0.5
    status, answer = _split(api, mode="split", challenger=challenger, percent=50)
    assert status == 202, answer
    try:
        time.sleep(settle)
        first = {b["card_id"]: score(api, b) for b in bodies}
        again = {b["card_id"]: score(api, b)["variant"] for b in bodies}
        assert {c: a["variant"] for c, a in first.items()} == again  # sticky per entity
        variants = [a["variant"] for a in first.values()]
        assert 5 <= variants.count("challenger") <= 35, variants
        served = {a["model_version"] for a in first.values() if a["variant"] == "challenger"}
        assert served == {f"v{challenger}"}
        assert metrics(api).value("driftline_api_scores_total", pipeline="fraud",
                                  variant="challenger") >= 2 * variants.count("challenger")

        status, answer = _split(api, mode="shadow", challenger=challenger)
        assert status == 202 and answer["traffic"]["mode"] == "shadow"
        time.sleep(settle)

        def shadowed() -> float:
            return metrics(api).value("driftline_api_shadow_difference_count",
                                      pipeline="fraud")

        before = shadowed()
        assert all(score(api, b)["variant"] == "champion" for b in bodies)
        assert shadowed() - before == len(bodies)  # each scored by both, one returned
    finally:
        status, answer = call(f"{api}/v1/models/fraud/traffic", method="DELETE")
    assert status == 200 and answer["traffic"] is None
    time.sleep(settle)
    assert all(score(api, b)["variant"] == "champion" for b in bodies)


def test_a_bad_split_is_refused_with_the_field(api, challenger):
    status, answer = _split(api, mode="split", challenger=challenger, percent=150)
    assert status == 422 and "percent" in answer["fields"]
    status, answer = _split(api, mode="sometimes", challenger=challenger)
    assert status == 422 and "mode" in answer["fields"]
    status, answer = _split(api, mode="split", challenger=challenger, percent=5, extra=1)
    assert status == 422 and "extra" in answer["fields"]
    status, answer = _split(api, mode="split", challenger=99_999)
    assert status == 404 and answer["fields"] == {"challenger": "no such registry version"}


# ---- the process pool -------------------------------------------------------------------

def test_the_pool_replaces_a_process_that_dies(api, pool, seeded):
    first = children(pool.proc.pid)
    assert len(first) == 2
    os.kill(first[0], signal.SIGKILL)  # no request in flight: nothing is lost
    body = event(seeded)
    for _ in range(20):  # the other process, accepting on the same socket, answers
        score(api, body)
    wait_for(lambda: len(children(pool.proc.pid)) == 2
             and first[0] not in children(pool.proc.pid), 30, "a replacement process")
    wait_for(lambda: all(call(f"{api}/healthz")[0] == 200 for _ in range(10)), 30,
             "the replacement to serve")


# ---- deadlines and the fallback: a slow Redis, then a stopped one --------------------------

def test_a_slow_redis_gets_a_degraded_answer_within_the_deadline(settings, api, seeded):
    body = event(seeded)
    time.sleep(settings.feature_cache_ttl_seconds)  # the card's state is not cached
    client = redis.Redis.from_url(settings.redis_url)
    client.execute_command("CLIENT", "PAUSE", "2000", "ALL")  # every command waits 2 s
    try:
        started = time.monotonic()
        answer = score(api, {**body, "event_id": "slow-1"})
        elapsed = time.monotonic() - started
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
        client.close()
    assert answer["degraded"] is True and answer["degraded_reason"] == "features_timeout"
    assert answer["variant"] == "fallback"
    assert answer["model_version"].endswith("-fallback")
    assert set(answer["features"]) == set(FRAUD.fallback.features)
    assert answer["prediction"] == pytest.approx(
        predict(seeded.learner.fallback, "binary", answer["features"]))
    assert elapsed < 1.0  # the deadline (0.1 s), not Redis' 2 s
    wait_for(lambda: not score(api, {**body, "event_id": f"x{time.monotonic_ns()}"})["degraded"],
             10, "normal answers again")


def test_a_redis_outage_never_gives_a_5xx(settings, api, seeded):
    stack = LocalStack(Settings.from_env())
    assert stack.pid("redis") is not None, "this test stops the stack's own Redis"
    before = metrics(api).value("driftline_api_degraded_total", pipeline="fraud",
                                reason="features_unavailable")
    stack.down(services=("redis",))
    time.sleep(settings.feature_cache_ttl_seconds)  # no state is cached
    try:
        answer = score(api, event(seeded, 1))
        assert answer["degraded"] is True
        assert answer["degraded_reason"] == "features_unavailable"
        assert 0 <= answer["prediction"] <= 1 and answer["contributions"]
        status, batch = call(f"{api}/v1/score/fraud:batch",
                             {"events": [event(seeded, i) for i in range(5)]})
        assert status == 200 and batch["degraded"] is True
        assert {r["degraded_reason"] for r in batch["results"]} == {"features_unavailable"}
        status, _ = call(f"{api}/healthz")
        assert status == 200
        assert metrics(api).value("driftline_api_degraded_total", pipeline="fraud",
                                  reason="features_unavailable") >= before + 6
    finally:
        stack.up(services=("redis",))
    wait_for(lambda: not score(api, event(seeded, 2))["degraded"], 30,
             "normal answers once Redis is back")


# ---- TLS ----------------------------------------------------------------------------------

def test_tls_when_a_certificate_is_configured(settings, seeded, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    tls = settings.with_overrides(api_port=free_port(), api_tls_cert=str(cert),
                                  api_tls_key=str(key))
    proc = api_process(tls, tmp_path).start()
    try:
        url = api_url(tls)
        assert url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        status, answer = call(f"{url}/v1/score/fraud", event(seeded), context=trusted)
        assert status == 200 and answer["variant"] == "champion"
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            call(f"{url}/healthz", context=ssl.create_default_context())  # not trusted
        with pytest.raises(OSError):  # no plain HTTP on the TLS port
            call(f"http://{tls.api_host}:{tls.api_port}/healthz")
    finally:
        proc.stop()


def test_a_fresh_pipeline_without_a_model_answers_with_the_prior(api):
    # agrawal was never seeded in this namespace: no snapshot, so no model and no
    # fallback model yet; its declared prior answers.
    body = {"event_id": "p-1", "source": "s", "ts": 1.7e9, "salary": 50_000.0,
            "commission": 0.0, "age": 40, "elevel": 1, "car": 2, "zipcode": 3,
            "hvalue": 100_000.0, "hyears": 10, "loan": 20_000.0}
    status, answer = call(f"{api}/v1/score/agrawal", body)
    assert status == 200, answer
    assert answer["degraded"] is True and answer["degraded_reason"] == "no_model"
    assert answer["model_version"] == "prior" and answer["prediction"] == 0.5
