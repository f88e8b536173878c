"""What the API must not do, whatever it is sent or serves. It refuses cheaply, in its error
shape, on every route that reads a body: an integer too long for Python's ``int`` to
convert, a compressed body that inflates past ``DRIFTLINE_API_MAX_BODY_BYTES`` (a gzip
bomb), a content coding it does not read. It never writes NaN or Infinity, which are not
JSON, even when a poisoned model scores them.

An API process of the module's own, in a namespace of its own (no worker: nothing here
needs features), so that its CPU time counts this module's requests only."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import math
import os
import time
import zlib
from pathlib import Path

import pytest

from driftline.adapters.config import Settings
from driftline.adapters.stores import RedisKeys, SnapshotStore, connect
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import api_process
from online_models.spec import build_model, predict
from streams.catalog.fraud import FRAUD
from tests.integration.conftest import TOKENS, wait_for

pytestmark = pytest.mark.integration

# One concrete path of each route that reads a body.
BODY_ROUTES = [("POST", "/v1/score/fraud"), ("POST", "/v1/score/fraud:batch"),
               ("POST", "/v1/models/fraud/promote"), ("PUT", "/v1/models/fraud/traffic"),
               ("POST", "/v1/similar/fraud")]
HUGE_INT = b"1" * 5000  # past CPython's 4,300-digit limit on int-string conversion
SCORE = "/v1/score/fraud"


@pytest.fixture(scope="module")
def settings(settings):
    with scratch_namespace(settings, f"{settings.namespace}-robust",
                           api_port=free_port()) as s:
        yield s


@pytest.fixture(scope="module")
def server(settings):
    proc = api_process(settings, settings.data_dir / "test-logs" / settings.namespace).start()
    yield proc
    proc.stop()


def payment(**changes) -> dict:
    return {"event_id": f"robust-{time.monotonic_ns()}", "card_id": "c-robust",
            "merchant_id": "m-1", "amount": 12.5, "ts": time.time(), **changes}


def bomb(inflated: int, member: int = 16 << 20) -> bytes:
    """A gzip body of ``inflated`` zero bytes, in members of ``member`` bytes (RFC 1952
    allows many; each compresses about 1,000 to 1, so 1 GB costs 1 MB and milliseconds)."""
    one = gzip.compress(bytes(member), compresslevel=9)
    return one * (inflated // member)


@pytest.mark.parametrize("method, path", BODY_ROUTES)
def test_a_huge_integer_gets_a_422_naming_it(settings, server, method, path):
    body = b'{"events": [{"amount": ' + HUGE_INT + b'}], "version": ' + HUGE_INT + b"}"
    status, answer = api_request(settings, method, path, body)
    assert status == 422, (status, answer)
    assert set(answer) == {"error", "fields"}
    assert "4300 digits" in answer["fields"]["$"], answer


@pytest.mark.parametrize("method, path", BODY_ROUTES)
def test_a_body_that_inflates_past_the_limit_is_refused(settings, server, method, path):
    body = bomb(8 << 20, member=8 << 20)
    status, answer = api_request(settings, method, path, body, encoding="gzip")
    assert status == 413, (status, answer)
    assert answer == {"error": "request body too large",
                      "fields": {"$": f"at most {settings.api_max_body_bytes} bytes"}}


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "raw deflate", "identity"])
def test_a_compressed_body_is_read_as_the_plain_one(settings, server, encoding):
    raw = json.dumps(payment()).encode()
    body = {"gzip": gzip.compress, "x-gzip": gzip.compress, "deflate": zlib.compress,
            "raw deflate": lambda b: zlib.compress(b, wbits=-15),
            "identity": lambda b: b}[encoding](raw)
    status, answer = api_request(settings, "POST", SCORE, body, encoding=encoding.split()[-1])
    assert status == 200, (status, answer)
    assert answer["entity"] == "c-robust"


@pytest.mark.parametrize("encoding", ["br", "gzip, gzip", "compress"])
def test_a_content_coding_it_does_not_read_gets_a_json_400(settings, server, encoding):
    status, answer = api_request(settings, "POST", SCORE, b"{}", encoding=encoding)
    assert status == 400, (status, answer)
    assert answer["error"] == "unreadable request body"
    assert "Content-Encoding" in answer["fields"], answer


def test_a_broken_gzip_body_gets_a_json_400(settings, server):
    body = gzip.compress(json.dumps(payment()).encode())[:-12]  # cut short
    status, answer = api_request(settings, "POST", SCORE, body, encoding="gzip")
    assert status == 400 and answer["error"] == "unreadable request body", (status, answer)


@pytest.mark.parametrize("token", [TOKENS["scorer"], None], ids=["scorer", "no token"])
def test_a_gzip_bomb_costs_no_more_than_a_plain_body_of_its_size(settings, server, token):
    """1 MB of gzip that inflates to 1 GB: the server's CPU time for it, compared with a
    plain body of the same length (a ratio, and CPU time, not wall time: the machine may
    be busy). Without a token the API answers 401 before it reads the body: what it then
    drains must not be inflated either."""
    body = bomb(1 << 30)
    assert len(body) < settings.api_max_body_bytes  # only its inflation is too large
    plain = b" " * (len(body) - 2) + b"{}"
    pid = server.proc.pid
    api_request(settings, "POST", SCORE, plain, token, drain=True)  # warm up: code paths
    started = cpu_seconds(pid)
    for _ in range(3):
        plain_status, _ = api_request(settings, "POST", SCORE, plain, token, drain=True)
    plain_cost = cpu_seconds(pid) - started
    started = cpu_seconds(pid)
    for _ in range(3):
        bomb_status, answer = api_request(settings, "POST", SCORE, body, token, "gzip", drain=True)
    bomb_cost = cpu_seconds(pid) - started
    assert (plain_status, bomb_status) == ((422, 413) if token else (401, 401)), answer
    # Inflating 1 GB costs over 2 s; the limit's worth, a few ms. The constant term is the
    # clock's tick (10 ms) and the API's background tasks.
    assert bomb_cost < 3 * plain_cost + 0.15, (bomb_cost, plain_cost)


# ---- a poisoned model --------------------------------------------------------------------

def test_a_poisoned_model_is_answered_for_by_the_fallback_never_as_nan(settings, server):
    """The champion's scores are NaN (its intercept is): single and batch scores come from
    the fallback, marked degraded, and every answer is strict JSON (``api_request`` checks)."""
    model = build_model(FRAUD.model)
    model.learn_one({"amount": 12.5}, False)
    model["LogisticRegression"].intercept = math.nan
    assert math.isnan(predict(model, "binary", {"amount": 12.5}))

    async def publish() -> None:
        client = connect(settings)
        await SnapshotStore(client, RedisKeys(settings.redis_prefix, "fraud")).publish(
            model, "v1.poisoned")
        await client.aclose()

    asyncio.run(publish())
    wait_for(lambda: api_request(settings, "GET", "/healthz", None)[1]["models"]["fraud"]
             == "v1.poisoned", 30, "the API to serve the poisoned model")
    status, answer = api_request(settings, "POST", SCORE, json.dumps(payment()).encode())
    assert status == 200, (status, answer)
    assert (answer["degraded"], answer["degraded_reason"], answer["variant"]) == (
        True, "score_not_finite", "fallback")
    assert answer["prediction"] == FRAUD.fallback.prior
    status, answer = api_request(settings, "POST", f"{SCORE}:batch", json.dumps(
        {"events": [payment(card_id=f"c-{i}") for i in range(3)]}).encode())
    assert status == 200 and answer["degraded"] is True, (status, answer)
    assert {r["degraded_reason"] for r in answer["results"]} == {"score_not_finite"}


# ---- helpers ----------------------------------------------------------------------------

def api_request(settings: Settings, method: str, path: str, body: bytes | None,
                token: str | None = TOKENS["admin"], encoding: str = "identity",
                drain: bool = False) -> tuple[int, dict]:
    """A request on a connection of its own: the status and the answer, read as strict
    JSON (NaN and Infinity are not JSON: they fail the test). With ``drain``, it waits
    until the server is done with the request: a second request on the connection is
    answered only once the first's body is drained (unless the server closed it, which
    also ends the work)."""
    conn = http.client.HTTPConnection(settings.api_host, settings.api_port, timeout=60)
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        status, answer = resp.status, json.loads(resp.read(), parse_constant=not_json)
        if drain:
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn.request("GET", "/healthz")
                conn.getresponse().read()
        return status, answer
    finally:
        conn.close()


def not_json(constant: str):
    raise AssertionError(f"the API wrote {constant}, which is not JSON")


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far, user and system, all its threads (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
