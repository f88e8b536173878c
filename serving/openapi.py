"""The OpenAPI 3.1 description of the scoring API, served at ``GET /openapi.json``.

It is generated from the route table (:mod:`serving.routes`), not written beside it: each
route's method, path, role, summary and parameters as declared with its handler; its
request and response bodies as the JSON schemas of their pydantic models
(:mod:`serving.schemas`); its errors, all of the one shape ``{"error": <message>,
"fields": {<field>: <reason>}}``. A ``{pipeline}`` route becomes one concrete path per
declared pipeline (``/v1/score/<name>``, ...), because each pipeline has its own event and
features. The settings give the limits (batch, contributions) and the open paths
(``DRIFTLINE_API_OPEN_PATHS``, marked ``security: []``); every other operation needs a
bearer token with the role in ``x-driftline-role``.

The document is computed once per :class:`~driftline.adapters.config.Settings` and shared:
treat it as read-only.

>>> from driftline.adapters.config import Settings
>>> from streams.pipelines import PIPELINES
>>> doc = document(Settings(api_batch_max=50))
>>> doc["openapi"], doc is document(Settings(api_batch_max=50))
('3.1.0', True)
>>> name = next(iter(PIPELINES))
>>> batch = doc["paths"][f"/v1/score/{name}:batch"]["post"]
>>> ref = batch["requestBody"]["content"]["application/json"]["schema"]["$ref"]
>>> doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["events"]["maxItems"]
50
>>> sorted(batch["responses"])
['200', '400', '401', '403', '413', '422', '503']
>>> doc["paths"]["/healthz"]["get"]["security"], batch["security"]
([], [{'bearerAuth': []}])
>>> doc["components"]["schemas"]["Error"]["required"]
['error', 'fields']
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from driftline.adapters.config import Settings
from serving.auth import ROLES
from serving.routes import ROUTES, open_paths
from serving.routing import Answer, Context, ModelOf, Route
from serving.schemas import Error, component_id
from streams.pipelines import PIPELINES

OPENAPI_VERSION = "3.1.0"
SCHEME = "bearerAuth"
REF = "#/components/schemas/{model}"

ERROR_TEXT = {
    400: "The body could not be read (a broken compressed body, say).",
    401: "No bearer token, or an unknown one.",
    403: "The token's role may not do this; or the request came from another site: a "
         "foreign `Origin` on a request that changes something, or (on a server without "
         "tokens) a `Host` that is a public name.",
    404: "Not found (the field names what).",
    409: "Conflicts with the registry's state (nothing to roll back to).",
    413: "The body is larger than DRIFTLINE_API_MAX_BODY_BYTES, or the batch longer than "
         "DRIFTLINE_API_BATCH_MAX.",
    415: "The body is not `application/json` (`Content-Type`): admin routes read JSON only.",
    422: "Invalid input: each bad field with its reason (`$` for the body as a whole).",
    503: "A dependency is unavailable (not the caller's fault); retrying later may succeed.",
}

TAGS = {
    "scoring": "Scores and their explanations.",
    "models": "Model versions; promotions, rollbacks, retrains and traffic splits (admin).",
    "embeddings": "Similar-case search and erasure over a pipeline's vectors.",
    "service": "Health, metrics, the dashboard and this description.",
}


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI description of the API as ``settings`` configure it (shared: read-only)."""
    return _document(settings)


@functools.lru_cache(maxsize=16)
def _document(settings: Settings) -> dict[str, Any]:
    operations = list(_operations(settings))
    refs, schemas = _schemas(operations)
    unguarded = open_paths(settings)
    paths: dict[str, dict[str, Any]] = {}
    for path, route, ctx in operations:
        op = _operation(route, ctx, refs)
        if path in unguarded:
            op["security"] = []
        else:
            op["security"] = [{SCHEME: []}]
            op["x-driftline-role"] = route.role
            op["responses"].update(_errors({401: None}))
            if route.role != ROLES[0]:
                op["responses"].update(_errors({403: None}))
        if route.method != "GET":
            op["responses"].update(_errors({403: None}))      # a foreign Origin
            if route.role == ROLES[-1]:
                op["responses"].update(_errors({415: None}))  # not application/json
        if not settings.api_tokens.strip():
            op["responses"].update(_errors({403: None}))      # a public Host, no tokens
        op["responses"] = dict(sorted(op["responses"].items()))
        paths.setdefault(path, {})[route.method.lower()] = op
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
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {SCHEME: {
                "type": "http", "scheme": "bearer",
                "description": "A token made by `driftline token`; the server holds its "
                               "SHA-256 hash only (DRIFTLINE_API_TOKENS)."}},
        },
    }


def _operations(settings: Settings) -> Iterator[tuple[str, Route, Context]]:
    """(concrete path, route, context) of every operation: one per declared pipeline for a
    ``{pipeline}`` route, for the pipelines it exists for."""
    for route in ROUTES:
        if not route.per_pipeline:
            yield route.path, route, Context(settings)
            continue
        for name, spec in PIPELINES.items():
            if route.exists_for(spec):
                yield route.path.replace("{pipeline}", name), route, Context(settings, spec)


def _model(of: ModelOf | None, ctx: Context) -> type[BaseModel] | None:
    if of is None or isinstance(of, type):
        return of
    return of(ctx)


def _schemas(operations: list[tuple[str, Route, Context]],
             ) -> tuple[dict[tuple[type, str], dict[str, Any]], dict[str, Any]]:
    """The JSON schema components of every body, and each body's reference; pydantic names
    colliding classes apart."""
    models: list[tuple[type[BaseModel], str]] = [(Error, "serialization")]
    for _, route, ctx in operations:
        if (body := _model(route.body, ctx)) is not None:
            models.append((body, "validation"))
        for answer in route.answers:
            if (model := _model(answer.model, ctx)) is not None:
                models.append((model, "serialization"))
    refs, defs = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    return refs, defs.get("$defs", {})


def _operation(route: Route, ctx: Context, refs: dict) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": [route.tag],
        "summary": route.summary.format(pipeline=ctx.name,
                                        batch_max=ctx.settings.api_batch_max),
        "operationId": route.handler.__name__ + (f"_{component_id(ctx.name)}"
                                                 if ctx.spec else ""),
        "x-driftline-route": route.path,  # the route this path is an instance of
    }
    if route.description:
        op["description"] = route.description
    if route.parameters:
        op["parameters"] = [dict(p) for p in route.parameters]
    responses = {str(a.status): _answer(a, ctx, refs) for a in route.answers}
    if (body := _model(route.body, ctx)) is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": refs[(body, "validation")]}}}
        responses.update(_errors({400: None}))
    responses.update(_errors(route.errors))
    op["responses"] = responses
    return op


def _answer(answer: Answer, ctx: Context, refs: dict) -> dict[str, Any]:
    model = _model(answer.model, ctx)
    schema = refs[(model, "serialization")] if model is not None else dict(answer.schema or {})
    return {"description": answer.description, "content": {answer.media: {"schema": schema}}}


def _errors(why: dict[int, str | None]) -> dict[str, Any]:
    """Error responses; a reason says more than the generic text of its status."""
    out = {}
    for code, reason in why.items():
        response = {"description": reason or ERROR_TEXT[code], "content": {
            "application/json": {"schema": {"$ref": REF.format(model="Error")}}}}
        if code == 401:
            response["headers"] = {"WWW-Authenticate": {
                "description": "The scheme to use: `Bearer`.", "schema": {"type": "string"}}}
        out[str(code)] = response
    return out


def _version() -> str:
    try:
        return metadata.version("driftline")
    except metadata.PackageNotFoundError:
        return "0"
