"""Property-based fuzzing of the running API from its own description (schemathesis).

Schemathesis sends every operation of the API's OpenAPI description valid and invalid
requests, as the admin, to an API of this module's own (a real process, with bearer tokens
configured, over the real Kafka, Redis, Milvus Lite and MLflow registry, in a namespace of
its own). Each response
must not be a 5xx, and must be as documented: its status, content type, headers and body
(against the response schema). Bodies that no schema describes, so that schemathesis never
sends them (not JSON, not UTF-8, nested too deep), are sent to each route that reads one.

The description is built here, at import, by :func:`serving.openapi.document` (pytest
parametrizes the operations when it collects the module, before the API runs; and
``schemathesis.pytest.from_fixture`` fails on pytest 9.2, which renamed the private
``Item._nodeid`` that it sets). The first test checks that the API serves exactly this
description at ``/openapi.json``.

The one 5xx accepted is the documented 503 of ``POST /v1/similar/<p>`` while a pipeline's
embeddings warm up (no frozen standardizer yet): the module's namespace has no labeled
events, so every valid similar-case query gets it (and the body of a found
one is not checked here; ``test_embeddings`` searches warm embeddings). Only that error
passes; a 503 for any other reason (the vector store failing, say) fails the test.

Every operation is fuzzed, the admin ones included, in a namespace no other test shares.
Its registry is empty, so a generated promotion or traffic split names a version that does
not exist (404) and a rollback has nothing to roll back to (409); a retrain request only
adds a control event (no retrainer runs); erasing an entity that has no state records no
erasure. The last test checks that the fuzz left every pipeline's model state as it found
it.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from driftline.adapters.config import Settings
from serving.openapi import document
from streams.pipelines import PIPELINES
from tests.integration.conftest import TOKEN_ENTRIES, TOKENS, call, own_namespace

pytestmark = pytest.mark.integration

# The session API's settings, as far as the description depends on them.
DESCRIPTION = json.loads(json.dumps(document(
    Settings.from_env().with_overrides(api_tokens=TOKEN_ENTRIES))))
AS_ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
WARMING_UP = "embeddings are warming up"

settings, logs, worker, api, worker_metrics = own_namespace("fuzz", sorted(PIPELINES))

schema = schemathesis.openapi.from_dict(DESCRIPTION, config=schemathesis.Config.from_dict({
    # Repeatable in CI: a fixed seed, Hypothesis derandomized, no example database.
    "seed": 20240611,
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
    "headers": AS_ADMIN,
    "request-timeout": 30,
    # Per operation and mode, on top of the coverage phase's boundary and negative cases.
    "generation": {"mode": "all", "max-examples": 30, "deterministic": True,
                   "database": "none"},
    "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
               "fuzzing": {"enabled": True}, "stateful": {"enabled": False}},
}))


def model_state(api: str) -> dict[str, dict]:
    """What later tests depend on, per pipeline: the version the learner serves, the
    registry's champion and versions, the traffic split."""
    state = {}
    for name in PIPELINES:
        status, body = call(f"{api}/v1/models/{name}")
        assert status == 200, body
        state[name] = {"revision": body["learner"].get("revision"),
                       "champion": body["registry"].get("champion"),
                       "versions": len(body["registry"].get("versions", [])),
                       "traffic": body["traffic"]}
    return state


@pytest.fixture(scope="module")
def state_before(api) -> dict[str, dict]:
    return model_state(api)


def test_the_api_serves_the_description_fuzzed_here(api):
    with urllib.request.urlopen(f"{api}/openapi.json", timeout=10) as resp:  # an open path
        assert json.loads(resp.read()) == DESCRIPTION


@schema.parametrize()
def test_no_request_gets_a_5xx_and_every_response_is_as_documented(case, api, state_before):
    response = case.call(base_url=api)
    checks = CHECKS
    if warming_up(case, response):
        checks = [c for c in CHECKS if c is not not_a_server_error]
    case.validate_response(response, checks=checks)


def warming_up(case, response) -> bool:
    """The documented 503 of a similar-case query before the embeddings are warm."""
    if not (case.method == "POST" and case.path.startswith("/v1/similar/")
            and response.status_code == 503):
        return False
    try:
        return response.json()["error"].startswith(WARMING_UP)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


# Bodies no JSON schema describes, so schemathesis never sends them: each must get a
# documented 4xx in the error shape, never a 5xx.
MALFORMED = {
    "deeply nested": b"[" * 100_000,  # well under the body limit
    "not UTF-8": b"\xff\xfe{}",
    "empty": b"",
    "not JSON": b"{oops",
    "a JSON string": b'"event"',
}


def body_operations() -> list[tuple[str, str]]:
    """One concrete path of each route that reads a body (its pipelines share a handler)."""
    first: dict[tuple[str, str], tuple[str, str]] = {}
    for path, ops in DESCRIPTION["paths"].items():
        for method, op in ops.items():
            if "requestBody" in op:
                first.setdefault((method, op["x-driftline-route"]), (method.upper(), path))
    return list(first.values())


@pytest.mark.parametrize("what", MALFORMED)
@pytest.mark.parametrize("method, path", body_operations())
def test_a_malformed_body_gets_a_documented_4xx(api, method, path, what):
    status, body = call(f"{api}{path}", MALFORMED[what], method=method)
    documented = DESCRIPTION["paths"][path][method.lower()]["responses"]
    assert 400 <= status < 500 and str(status) in documented, (status, body)
    assert set(body) == {"error", "fields"} and isinstance(body["error"], str), body


def test_the_fuzz_left_every_model_as_it_found_it(api, state_before):
    assert model_state(api) == state_before
