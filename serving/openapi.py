"""The OpenAPI 3.1 description of the scoring API, served at ``GET /openapi.json``.

It is built from the code, not written beside it:

* the routes, and the role each needs, are read from the router of
  :func:`serving.app.create_app` (a route with no description here is an error, so a new
  route cannot go undocumented);
* the request bodies are the JSON schemas of the pydantic models the handlers validate
  with: each pipeline's event type (``PIPELINES[name].event_type``),
  :class:`serving.similar.SimilarQuery` and :class:`serving.traffic.TrafficRequest`;
* every ``{pipeline}`` route becomes one concrete path per declared pipeline
  (``/v1/score/<name>``, ``/v1/score/<name>:batch``, ``/v1/models/<name>``, ...), because
  each pipeline has its own event schema and its own features; similar-case search is
  described for the pipelines that declare embeddings only (the others answer 404);
* the settings give the batch limit (``DRIFTLINE_API_BATCH_MAX``), the body limit, the
  number of contributions and the open paths (``DRIFTLINE_API_OPEN_PATHS``, marked
  ``security: []``); every other operation needs a bearer token.

Every error has the one shape ``{"error": <message>, "fields": {<field>: <reason>}}``
(:mod:`serving.errors`). Bodies that vary (the model status) are described loosely.

The document is computed once per :class:`~driftline.adapters.config.Settings` and shared: treat
it as read-only.

>>> from driftline.adapters.config import Settings
>>> from streams.pipelines import PIPELINES
>>> doc = document(Settings(api_batch_max=50))
>>> doc["openapi"], doc is document(Settings(api_batch_max=50))
('3.1.0', True)
>>> name = next(iter(PIPELINES))
>>> batch = doc["paths"][f"/v1/score/{name}:batch"]["post"]
>>> body = batch["requestBody"]["content"]["application/json"]["schema"]
>>> body["properties"]["events"]["maxItems"]
50
>>> sorted(batch["responses"])
['200', '400', '401', '413', '422', '503']
>>> doc["paths"]["/healthz"]["get"]["security"], batch["security"]
([], [{'bearerAuth': []}])
>>> doc["components"]["schemas"]["Error"]["required"]
['error', 'fields']
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from importlib import metadata
from typing import Any

from pydantic.json_schema import models_json_schema

from driftline.adapters.config import Settings
from serving.auth import ROLES
from serving.similar import SimilarQuery
from serving.traffic import TrafficRequest, TrafficSplit
from streams.declarations import PipelineSpec
from streams.pipelines import PIPELINES

OPENAPI_VERSION = "3.1.0"
SCHEME = "bearerAuth"
REF = "#/components/schemas/{model}"
ERROR = {"$ref": "#/components/schemas/Error"}


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI description of the API as ``settings`` configure it (shared: read-only).

    Raises LookupError naming a route of :func:`serving.app.create_app` that this module
    does not describe."""
    return _document(settings)


@functools.lru_cache(maxsize=16)
def _document(settings: Settings) -> dict[str, Any]:
    components = _components(settings)
    open_paths = {p.strip() for p in settings.api_open_paths.split(",") if p.strip()}
    paths: dict[str, dict[str, Any]] = {}
    for method, template, handler in _routes():
        describe = OPERATIONS.get((method, template))
        if describe is None:
            raise LookupError(f"{method} {template} ({handler.__name__}) is not described in "
                              f"serving/openapi.py")
        role = getattr(handler, "role", ROLES[-1])  # as the API: unmarked needs admin
        for path, spec in _concrete(template):
            op = describe(_Context(settings, spec))
            if op is None:
                continue
            op["operationId"] = handler.__name__ + (f"_{_id(spec.name)}" if spec else "")
            op["x-driftline-route"] = template  # the route this path is an instance of
            if "requestBody" in op:
                op["responses"].update(_errors(400))
            if path in open_paths:
                op["security"] = []
            else:
                op["security"] = [{SCHEME: []}]
                op["x-driftline-role"] = role
                op["responses"].update(_errors(401))
                if role != ROLES[0]:
                    op["responses"].update(_errors(403))
            op["responses"] = dict(sorted(op["responses"].items()))
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Driftline scoring API",
            "version": _version(),
            "description": (
                "Real-time scores of the declared pipelines, with their explanations; model "
                "status and, for admins, promotions, rollbacks, retrains and traffic splits; "
                "similar-case search and erasure over a pipeline's embeddings. Every error "
                'is `{"error": <message>, "fields": {<field>: <reason>}}`. Operations '
                "need a bearer token whose role is at least `x-driftline-role` (roles: "
                f"{', '.join(ROLES)}), unless marked `security: []`"
                + ("." if settings.api_tokens.strip() else
                   "; this server has no tokens configured, so it does not check them.")),
        },
        "security": [{SCHEME: []}],
        "tags": [{"name": t, "description": d} for t, d in TAGS.items()],
        "paths": paths,
        "components": components,
    }


# ---- the routes -----------------------------------------------------------------------

def _routes() -> list[tuple[str, str, Callable]]:
    """(method, path template, handler) of every route of the application, HEAD aside."""
    from serving.app import create_app  # serving.app imports this module lazily too

    # The routes do not depend on the tokens: a placeholder entry (a hash no token has)
    # spares the warning that authentication is off, and a malformed setting.
    app = create_app(Settings(api_tokens="openapi:scorer:" + "0" * 64))
    return [(r.method, r.resource.canonical, r.handler) for r in app.router.routes()
            if r.method != "HEAD" and r.resource is not None]


def _concrete(template: str) -> list[tuple[str, PipelineSpec | None]]:
    """The paths of a route: one per declared pipeline for a ``{pipeline}`` route."""
    if "{pipeline}" not in template:
        return [(template, None)]
    return [(template.replace("{pipeline}", name), spec) for name, spec in PIPELINES.items()]


def _id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _version() -> str:
    try:
        return metadata.version("driftline")
    except metadata.PackageNotFoundError:
        return "0"


class _Context:
    """What an operation's description depends on: the settings and the pipeline."""

    def __init__(self, settings: Settings, spec: PipelineSpec | None) -> None:
        self.settings = settings
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else ""

    def event(self) -> dict[str, str]:
        return {"$ref": REF.format(model=_component_name(self.spec.event_type))}

    def score(self) -> dict[str, str]:
        return {"$ref": REF.format(model=f"Score_{_id(self.name)}")}


# ---- pieces of operations ---------------------------------------------------------------

ERROR_TEXT = {
    400: "The body could not be read (a broken compressed body, say).",
    401: "No bearer token, or an unknown one.",
    403: "The token's role may not do this.",
    404: "Not found (the field names what).",
    409: "Conflicts with the registry's state (nothing to roll back to).",
    413: "The body is larger than DRIFTLINE_API_MAX_BODY_BYTES, or the batch longer than "
         "DRIFTLINE_API_BATCH_MAX.",
    422: "Invalid input: each bad field with its reason (`$` for the body as a whole).",
    503: "A dependency is unavailable (not the caller's fault); retrying later may succeed.",
}

EXPLAIN = {
    "name": "explain", "in": "query", "required": False,
    "description": "false leaves the contributions out: one prediction per feature saved",
    "schema": {"type": "string", "enum": ["true", "false", "1", "0"], "default": "true"},
}

TAGS = {
    "scoring": "Scores and their explanations.",
    "models": "Model versions; promotions, rollbacks, retrains and traffic splits (admin).",
    "embeddings": "Similar-case search and erasure over a pipeline's vectors.",
    "service": "Health, metrics and this description.",
}


def _errors(*codes: int, **why: str) -> dict[str, Any]:
    """Error responses; ``why`` (``_503="..."``) says more than the generic text."""
    out = {}
    for code in codes:
        response = _json(ERROR, why.get(f"_{code}", ERROR_TEXT[code]))
        if code == 401:
            response["headers"] = {"WWW-Authenticate": {
                "description": "The scheme to use: `Bearer`.", "schema": {"type": "string"}}}
        out[str(code)] = response
    return out


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"required": True,
                            "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return body


def _const(name: str) -> dict[str, Any]:
    return {"type": "string", "const": name}


# ---- the operations, by route -----------------------------------------------------------

def _score_event(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["scoring"],
        "summary": f"Score one {c.name} event",
        "description": (
            "Features as the worker computes them from the entity's stored state (the event "
            "is scored, never applied), the model in memory, the top feature contributions. "
            "When the features or the model are not there in time, the pipeline's fallback "
            "model answers and the score is `degraded`, with the reason."),
        "parameters": [EXPLAIN],
        "requestBody": _body(c.event()),
        "responses": {
            "200": _json(c.score(), "The score."),
            **_errors(413, 422, 503, _503="No features or model in time, and the pipeline "
                                          "declares no fallback model."),
        },
    }


def _score_batch(c: _Context) -> dict[str, Any]:
    limit = c.settings.api_batch_max
    return {
        "tags": ["scoring"],
        "summary": f"Score up to {limit} {c.name} events",
        "description": (
            "Each event scored as the single form would, independently of the others. One "
            "invalid event fails the whole batch, each bad field named by its index "
            "(`events.3.amount`)."),
        "parameters": [EXPLAIN],
        "requestBody": _body({
            "type": "object",
            "required": ["events"],
            "properties": {"events": {"type": "array", "items": c.event(), "minItems": 1,
                                      "maxItems": limit}},
        }),
        "responses": {
            "200": _json({
                "type": "object",
                "required": ["pipeline", "degraded", "results"],
                "properties": {
                    "pipeline": _const(c.name),
                    "degraded": {"type": "boolean",
                                 "description": "whether any of the scores is degraded"},
                    "results": {"type": "array", "items": c.score(), "minItems": 1,
                                "maxItems": limit},
                },
            }, "The scores, in the order of the events."),
            **_errors(413, 422, 503, _503="No features or model in time, and the pipeline "
                                          "declares no fallback model."),
        },
    }


def _model_status(c: _Context) -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"]}
    return {
        "tags": ["models"],
        "summary": f"What serves {c.name}, how recent versions did, the registry",
        "responses": {"200": _json({
            "type": "object",
            "required": ["pipeline", "task", "serving", "traffic", "learner", "prequential",
                         "feature_drift", "registry"],
            "properties": {
                "pipeline": _const(c.name),
                "task": {"type": "string", "const": c.spec.task},
                "serving": {"type": "object",
                            "properties": {"version": nullable_str,
                                           "published_at": {"type": ["number", "string",
                                                                     "null"]}}},
                "traffic": {"anyOf": [{"$ref": REF.format(model="TrafficSplit")},
                                      {"type": "null"}]},
                "learner": {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "the learner's version, revision, updates, ..."},
                "prequential": {"type": "object",
                                "description": "rolling metrics of each recent version"},
                "feature_drift": {"type": "object"},
                "registry": {"type": "object",
                             "description": "the champion and every version, or the error "
                                          "when the registry is unavailable",
                             "properties": {"champion": {"type": ["integer", "null"]},
                                            "versions": {"type": "array",
                                                         "items": {"$ref": REF.format(
                                                             model="ModelVersion")}},
                                            "error": {"type": "string"}}},
            },
        }, "The model status; its parts vary with what the learner has published.")},
    }


def _promote(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["models"],
        "summary": f"Make a registry version the {c.name} champion",
        "description": "The learner swaps it in; every API process serves it within "
                       "DRIFTLINE_MODEL_REFRESH_SECONDS.",
        "requestBody": _body({
            "type": "object", "required": ["version"],
            "properties": {"version": {"type": "integer", "minimum": 1,
                                       "exclusiveMaximum": 2**31,
                                       "description": "the registry version to serve"}},
        }),
        "responses": {
            "202": _json({"$ref": REF.format(model="Swap")}, "The swap is requested."),
            **_errors(404, 409, 413, 422, 503, _404="No such registry version.",
                      _503="The registry or Kafka is unavailable."),
        },
    }


def _rollback(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["models"],
        "summary": f"Serve the {c.name} champion before the current one again",
        "responses": {
            "202": _json({"$ref": REF.format(model="Swap")}, "The swap is requested."),
            **_errors(404, 409, 503, _404="The version to roll back to no longer exists.",
                      _409="No champion, or none before it, to roll back to.",
                      _503="The registry or Kafka is unavailable."),
        },
    }


def _retrain(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["models"],
        "summary": f"Ask the retrainer for a {c.name} retrain now",
        "responses": {
            "202": _json({"type": "object", "required": ["pipeline", "retrain"],
                          "properties": {"pipeline": _const(c.name),
                                         "retrain": {"const": "requested"}}},
                         "The request is on the pipeline's control topic."),
            **_errors(503, _503="Kafka is unavailable."),
        },
    }


def _set_traffic(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["models"],
        "summary": f"Serve a {c.name} registry version as challenger (split or shadow)",
        "requestBody": _body({"$ref": REF.format(model="TrafficRequest")}),
        "responses": {
            "202": _json(_traffic(c, {"$ref": REF.format(model="TrafficSplit")}),
                         "The split is set; every API process applies it within "
                         "DRIFTLINE_MODEL_REFRESH_SECONDS."),
            **_errors(404, 413, 422, 503, _404="No such registry version.",
                      _503="The registry is unavailable."),
        },
    }


def _end_traffic(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["models"],
        "summary": f"End the {c.name} traffic split: the champion serves everything",
        "responses": {"200": _json(_traffic(c, {"type": "null"}), "The split is over."),
                      **_errors(503, _503="Redis is unavailable: the split goes on.")},
    }


def _traffic(c: _Context, split: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["pipeline", "traffic"],
            "properties": {"pipeline": _const(c.name), "traffic": split}}


def _similar(c: _Context) -> dict[str, Any] | None:
    if c.spec.embeddings is None:
        return None  # routed, but a 404 for every request: not worth a path
    hit = {"type": "object",
           "properties": {"entity": {"type": "string"}, "distance": {"type": "number"}},
           "required": ["entity", "distance"]}
    return {
        "tags": ["embeddings"],
        "summary": f"The nearest labeled {c.name} events, or entity profiles",
        "description": (
            "Give an event (embedded as the embedding agent embeds it) or a known entity "
            "(its profile); get the `k` nearest labeled events (`kind: events`, optionally "
            "only positive or negative ones with `label`) or entity profiles "
            "(`kind: entities`, for an entity only), nearest first."),
        "requestBody": _body({"$ref": REF.format(model=f"SimilarQuery_{_id(c.name)}")}),
        "responses": {
            "200": _json({
                "type": "object",
                "required": ["pipeline", "kind", "query", "metric", "k", "neighbours"],
                "properties": {
                    "pipeline": _const(c.name),
                    "kind": {"enum": ["events", "entities"]},
                    "query": {"type": "object", "properties": {
                        "event_id": {"type": "string"}, "entity": {"type": "string"}}},
                    "metric": {"type": "string"},
                    "k": {"type": "integer"},
                    "neighbours": {"type": "array", "items": hit},
                },
            }, "The neighbours, nearest first."),
            **_errors(404, 413, 422, 503, _404="The entity has no profile (no labeled "
                                               "events).",
                      _503="The embeddings are warming up (no frozen standardizer yet: "
                           "the error says `embeddings are warming up`), or the vector "
                           "store is unavailable."),
        },
    }


def _forget_entity(c: _Context) -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    return {
        "tags": ["embeddings"],
        "summary": f"Erase a {c.name} entity: its features, window state and vectors",
        "description": "The erasure is recorded first, so that the worker neither rebuilds "
                       "the erased history nor writes its vectors again. Erasing again is "
                       "safe.",
        "parameters": [{"name": "entity", "in": "path", "required": True,
                        "description": "the entity's id",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 128}}],
        "responses": {
            "200": _json({
                "type": "object",
                "required": ["pipeline", "entity", "deleted", "erased_until"],
                "properties": {
                    "pipeline": _const(c.name),
                    "entity": {"type": "string"},
                    "deleted": {"type": "object",
                                "required": ["features", "event_vectors", "entity_vectors"],
                                "properties": {"features": count, "event_vectors": count,
                                               "entity_vectors": count}},
                    "erased_until": {"type": ["number", "null"],
                                     "description": "the newest event time erased"},
                },
            }, "Erased (counts are 0 for an unknown entity)."),
            **_errors(422, 503, _422="The entity id is longer than 128 characters.",
                      _503="A store is unavailable; nothing is lost by retrying."),
        },
    }


def _healthz(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["service"],
        "summary": "Liveness, and the model version each pipeline serves",
        "responses": {"200": _json({
            "type": "object", "required": ["status", "models"],
            "properties": {"status": {"const": "ok"},
                           "models": {"type": "object",
                                      "propertyNames": {"enum": list(PIPELINES)},
                                      "additionalProperties": {"type": ["string", "null"]}}},
        }, "Up.")},
    }


def _metrics(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["service"],
        "summary": "Prometheus metrics",
        "responses": {"200": {"description": "The Prometheus text exposition format.",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }


def _openapi(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["service"],
        "summary": "This description",
        "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]},
                                   "The OpenAPI 3.1 document.")},
    }


def _dashboard(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["service"],
        "summary": "The live dashboard: throughput, latency, the prequential metric with drift "
                   "detections and promotions, the model versions",
        "responses": {"200": {"description": "A self-contained HTML page; it polls "
                                             "`/dashboard/data`.",
                              "content": {"text/html": {"schema": {"type": "string"}}}}},
    }


def _dashboard_data(c: _Context) -> dict[str, Any]:
    return {
        "tags": ["service"],
        "summary": "The dashboard's samples (the last 30 minutes) and current figures",
        "parameters": [{"name": "since", "in": "query", "required": False,
                        "description": "only the samples after this time (the `now` of an "
                                       "earlier answer)",
                        "schema": {"type": "number"}}],
        "responses": {
            "200": _json({"type": "object",
                          "required": ["now", "interval", "window", "worker", "redis", "api",
                                       "pipelines", "process"],
                          "properties": {"pipelines": {
                              "type": "object", "propertyNames": {"enum": list(PIPELINES)}}}},
                         "Samples, markers and current figures per pipeline, and the API's."),
            **_errors(422, _422="`since` is not a finite number."),
        },
    }


OPERATIONS: dict[tuple[str, str], Callable[[_Context], dict[str, Any] | None]] = {
    ("GET", "/dashboard"): _dashboard,
    ("GET", "/dashboard/data"): _dashboard_data,
    ("POST", "/v1/score/{pipeline}:batch"): _score_batch,
    ("POST", "/v1/score/{pipeline}"): _score_event,
    ("GET", "/v1/models/{pipeline}"): _model_status,
    ("POST", "/v1/models/{pipeline}/promote"): _promote,
    ("POST", "/v1/models/{pipeline}/rollback"): _rollback,
    ("POST", "/v1/models/{pipeline}/retrain"): _retrain,
    ("PUT", "/v1/models/{pipeline}/traffic"): _set_traffic,
    ("DELETE", "/v1/models/{pipeline}/traffic"): _end_traffic,
    ("POST", "/v1/similar/{pipeline}"): _similar,
    ("DELETE", "/v1/entities/{pipeline}/{entity}"): _forget_entity,
    ("GET", "/healthz"): _healthz,
    ("GET", "/metrics"): _metrics,
    ("GET", "/openapi.json"): _openapi,
}


# ---- components -------------------------------------------------------------------------

def _component_name(model: type) -> str:
    return _model_names()[model]


@functools.cache
def _model_schemas() -> tuple[dict[type, str], dict[str, Any]]:
    """Component names and JSON schemas of the models the handlers validate with (and of
    :class:`TrafficSplit`, which responses carry); pydantic names colliding classes."""
    models = [(spec.event_type, "validation") for spec in PIPELINES.values()]
    models += [(SimilarQuery, "validation"), (TrafficRequest, "validation"),
               (TrafficSplit, "serialization")]
    refs, defs = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    names = {model: ref["$ref"].rsplit("/", 1)[-1] for (model, _), ref in refs.items()}
    return names, defs.get("$defs", {})


def _model_names() -> dict[type, str]:
    return _model_schemas()[0]


def _components(settings: Settings) -> dict[str, Any]:
    schemas = copy.deepcopy(_model_schemas()[1])
    schemas["Error"] = {
        "type": "object",
        "description": "Every error of the API.",
        "required": ["error", "fields"],
        "additionalProperties": False,
        "properties": {
            "error": {"type": "string", "description": "what went wrong"},
            "fields": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "each bad field (dotted path, `$` for the whole body) "
                                      "and why"},
        },
    }
    schemas["ModelVersion"] = {
        "type": "object",
        "description": "A registry version with its lineage and hold-out metrics.",
        "required": ["pipeline", "version"],
        "properties": {"pipeline": {"type": "string"}, "version": {"type": "integer"},
                       "lineage": {"type": "object"}, "metrics": {"type": "object"},
                       "created_at": {"type": "number"}, "champion": {"type": "boolean"}},
    }
    schemas["Swap"] = {
        "type": "object", "required": ["champion", "swap"],
        "properties": {"champion": {"$ref": REF.format(model="ModelVersion")},
                       "swap": {"const": "requested"}},
    }
    for name, spec in PIPELINES.items():
        schemas[f"Score_{_id(name)}"] = _score_schema(spec, settings)
        if spec.embeddings is not None:
            schemas[f"SimilarQuery_{_id(name)}"] = _similar_query_schema(spec, schemas)
    return {
        "schemas": dict(sorted(schemas.items())),
        "securitySchemes": {SCHEME: {
            "type": "http", "scheme": "bearer",
            "description": "A token made by `driftline token`; the server holds its "
                           "SHA-256 hash only (DRIFTLINE_API_TOKENS)."}},
    }


def _score_schema(spec: PipelineSpec, settings: Settings) -> dict[str, Any]:
    """A score of ``spec``'s pipeline, as ``serving.app._score_body`` writes it."""
    feature = {"type": "string", "enum": list(spec.model_feature_names)}
    properties: dict[str, Any] = {
        "pipeline": _const(spec.name),
        "event_id": {"type": "string"},
        "entity": {"type": "string"},
        "prediction": {"type": "number",
                       "description": "a probability" if spec.task == "binary"
                       else "the predicted value"},
        "model_version": {"type": "string"},
        "variant": {"enum": ["champion", "challenger", "fallback"]},
        "degraded": {"type": "boolean",
                     "description": "the fallback model answered (features or model late)"},
        "degraded_reason": {"type": "string", "description": "only when degraded"},
        "contributions": {
            "type": "array", "maxItems": max(settings.api_explain_top, 0),
            "description": "the features that moved the score most, largest first",
            "items": {"type": "object", "required": ["feature", "value", "contribution"],
                      "properties": {"feature": feature, "value": {"type": "number"},
                                     "contribution": {"type": "number"}}}},
        "features": {"type": "object", "propertyNames": feature,
                     "additionalProperties": {"type": "number"},
                     "description": "the features the model was given"},
        "entity_known": {"type": ["boolean", "null"],
                         "description": "whether the entity has stored state (null: "
                                        "unknown, the state could not be read)"},
    }
    required = ["pipeline", "event_id", "entity", "prediction", "model_version", "variant",
                "degraded", "contributions", "features", "entity_known"]
    if spec.task == "binary":
        properties["probability"] = {"type": "number", "minimum": 0, "maximum": 1,
                                     "description": "the prediction (binary pipelines)"}
        required.append("probability")
    return {
        "type": "object",
        "description": f"A {spec.name} score ({spec.task}).",
        "required": required,
        "properties": properties,
        # degraded_reason comes with degraded scores only.
        "if": {"required": ["degraded"], "properties": {"degraded": {"const": True}}},
        "then": {"required": ["degraded_reason"]},
        "else": {"not": {"required": ["degraded_reason"]}},
    }


def _similar_query_schema(spec: PipelineSpec, schemas: dict[str, Any]) -> dict[str, Any]:
    """:class:`SimilarQuery` for one pipeline: its ``event`` is that pipeline's event."""
    query = copy.deepcopy(schemas[_component_name(SimilarQuery)])
    event = {"$ref": REF.format(model=_component_name(spec.event_type))}
    query["properties"]["event"] = {"anyOf": [event, {"type": "null"}], "default": None}
    query["title"] = f"SimilarQuery ({spec.name})"
    # SimilarQuery's validator, which its JSON schema cannot carry: exactly one of them.
    query["oneOf"] = [
        {"required": ["event"], "properties": {"event": {"type": "object"}}},
        {"required": ["entity"], "properties": {"entity": {"type": "string"}}},
    ]
    return query
