"""What several handler modules need: the path's pipeline, a JSON object body, the registry."""

from __future__ import annotations

import functools
import json

from aiohttp import web

from driftline.adapters.stores import RedisKeys
from driftline.errors import Invalid, NotFound
from serving.bodies import read_body
from serving.keys import REGISTRY, SETTINGS
from streams.declarations import PipelineSpec
from streams.pipelines import PIPELINES
from streams.schemas import InvalidRecord, decode_json

# NaN and Infinity are not JSON: a non-finite number left in a score is a 500, never sent.
FINITE_JSON = functools.partial(json.dumps, allow_nan=False)


def pipeline_of(request: web.Request) -> PipelineSpec:
    """The path's pipeline; NotFound naming the field when it is not declared."""
    name = request.match_info["pipeline"]
    spec = PIPELINES.get(name)
    if spec is None:
        raise NotFound(f"unknown pipeline {name!r}", fields={"pipeline": "not declared"})
    return spec


def keys_of(request: web.Request, pipeline: str) -> RedisKeys:
    return RedisKeys(request.app[SETTINGS].redis_prefix, pipeline)


async def json_object(request: web.Request) -> dict:
    """The body as a JSON object, else Invalid naming what is wrong."""
    try:
        payload = decode_json(await read_body(request))
    except InvalidRecord as exc:
        raise Invalid(exc.fields, "invalid body") from None
    if not isinstance(payload, dict):
        raise Invalid({"$": "expected a JSON object"}, "invalid body")
    return payload


def registry_of(app: web.Application):
    # MLflow is imported on the first models request only; the scoring path never needs it.
    if app.get(REGISTRY) is None:
        from online_models.registry import Registry

        app[REGISTRY] = Registry.from_settings(app[SETTINGS])
    return app[REGISTRY]
