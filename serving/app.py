"""The scoring API (``driftline serve``), an aiohttp application.

``POST /v1/score/{pipeline}`` takes one event, reads the entity's window state from
Redis, computes the event's features with the same pure code the worker runs (and the
neighbour feature through the same :class:`~driftline.vectors.EmbeddingSpace`), and scores
them with the in-memory model, which a background task swaps for each newer snapshot.
``/v1/models/...`` reports and moves model versions; ``/v1/similar/...`` and
``/v1/entities/...`` are in :mod:`serving.similar`.

Every error is a JSON body ``{"error": ..., "fields": {...}}`` with a 4xx status when the
caller is at fault; an unexpected failure is a 500 with the same shape, never HTML.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from aiohttp import web

from driftline.config import Settings
from driftline.stores import (
    EmbeddingStore,
    FeatureStore,
    LiveModel,
    RedisKeys,
    SnapshotStore,
    connect,
)
from driftline.vectors import EmbeddingSpace
from monitoring import metrics as m
from online_models import lifecycle
from online_models.spec import predict
from serving import similar
from serving.errors import error
from serving.similar import SPACES
from streams.engine import FeatureEngine
from streams.pipelines import PIPELINES
from streams.schemas import InvalidRecord, parse

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
MODELS = web.AppKey("models", dict)
REDIS = web.AppKey("redis", object)
ENGINES = web.AppKey("engines", dict)
REGISTRY = web.AppKey("registry", object)

MAX_BODY_BYTES = 64 * 1024


@web.middleware
async def observe_and_shape_errors(request: web.Request, handler):
    """Count and time every request, and turn every failure into a JSON body."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource \
        else "unmatched"
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = error(exc.status, exc.reason, getattr(exc, "fields", None))
    except Exception:  # noqa: BLE001 - the caller still gets JSON, the log gets the trace
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error(500, "internal error")
    m.HTTP_REQUESTS.labels(route, request.method, str(response.status)).inc()
    m.HTTP_SECONDS.labels(route, request.method).observe(time.perf_counter() - started)
    return response


def _pipeline_or_404(request: web.Request) -> str:
    """The path's pipeline name; a 404 naming the field when it is not declared."""
    name = request.match_info["pipeline"]
    if name not in PIPELINES:
        exc = web.HTTPNotFound(reason=f"unknown pipeline {name!r}")
        exc.fields = {"pipeline": "not declared"}
        raise exc
    return name


async def score_event(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    pipeline = PIPELINES[name]
    body = await request.read()
    try:
        event = parse(pipeline.event_type, body)
    except InvalidRecord as exc:
        return error(422, "invalid event", exc.errors)
    live: LiveModel = request.app[MODELS][name]
    snap = live.current
    if snap is None:
        return error(503, "no model published yet for this pipeline")
    entity = pipeline.entity_of(event)
    _, state = await FeatureStore(request.app[REDIS], _keys(request.app, name)).get(entity)
    features = request.app[ENGINES][name].features_for(state, event)
    space = request.app[SPACES].get(name)
    if space is not None:
        await space.add_neighbour_feature(features)
    value = predict(snap.model, pipeline.task, features)
    m.PREDICTIONS.labels(name, "api").inc()
    body = {
        "pipeline": name,
        "event_id": pipeline.event_id_of(event),
        "entity": entity,
        "prediction": value,
        "model_version": snap.version,
        "features": features,
        "entity_known": state is not None,
    }
    if pipeline.task == "binary":
        body["probability"] = value
    return web.json_response(body)


def _keys(app: web.Application, name: str) -> RedisKeys:
    return RedisKeys(app[SETTINGS].redis_prefix, name)


# ---- embeddings: similar cases, erasure ---------------------------------------------------

async def similar_cases(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    return await similar.similar(request, PIPELINES[name], request.app[ENGINES][name],
                                 request.app[REDIS], _keys(request.app, name))


async def forget_entity(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    return await similar.forget_entity(request, PIPELINES[name], request.app[REDIS],
                                       _keys(request.app, name))


# ---- models: versions, prequential metrics, registry; admin actions ------------------------

def _registry(app: web.Application):
    # MLflow is imported on the first models request only; the scoring path never needs it.
    if app.get(REGISTRY) is None:
        from online_models.registry import Registry

        app[REGISTRY] = Registry.from_settings(app[SETTINGS])
    return app[REGISTRY]


async def model_status(request: web.Request) -> web.Response:
    """What serves, how each recent version did (prequential), and the registry."""
    name = _pipeline_or_404(request)
    live: LiveModel = request.app[MODELS][name]
    raw = {k.decode(): v.decode()
           for k, v in (await request.app[REDIS].hgetall(_keys(request.app, name).learner)).items()}
    learner = {k: raw[k] for k in ("version", "revision", "updates", "duplicates",
                                    "next_offset", "published_at") if k in raw}
    body = {
        "pipeline": name,
        "task": PIPELINES[name].task,
        "serving": {"version": live.current.version if live.current else None,
                    "published_at": live.current.published_at if live.current else None},
        "learner": learner,
        "prequential": json.loads(raw.get("metrics", "{}")),
        "feature_drift": json.loads(raw.get("feature_drift", "{}")),
    }
    try:
        versions = await asyncio.to_thread(lambda: _registry(request.app).versions(name))
        body["registry"] = {
            "champion": next((v.version for v in versions if v.champion), None),
            "versions": [v.to_dict() for v in versions],
        }
    except Exception as exc:  # noqa: BLE001 - the rest of the status is still worth having
        log.warning("registry unavailable", exc_info=True)
        body["registry"] = {"error": f"registry unavailable: {exc}"}
    return web.json_response(body)


async def promote_model(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    try:
        payload = await request.json()
    except ValueError:
        return error(422, "invalid body", {"$": "not valid JSON"})
    version = payload.get("version") if isinstance(payload, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**31:
        return error(422, "invalid body", {"version": "a registry version number is required"})
    return await _admin_action(request, lambda s, r: lifecycle.promote(s, r, name, version))


async def rollback_model(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    return await _admin_action(request, lambda s, r: lifecycle.rollback(s, r, name))


async def retrain_model(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    try:
        await asyncio.to_thread(lifecycle.request_retrain, request.app[SETTINGS], name, "api")
    except Exception as exc:  # noqa: BLE001 - Kafka is down: not the caller's fault
        log.warning("retrain request failed", exc_info=True)
        return error(503, f"Kafka unavailable: {exc}")
    return web.json_response({"pipeline": name, "retrain": "requested"}, status=202)


async def _admin_action(request: web.Request, action) -> web.Response:
    app = request.app
    try:
        mv = await asyncio.to_thread(lambda: action(app[SETTINGS], _registry(app)))
    except (KeyError, ValueError) as exc:
        return error(409 if isinstance(exc, ValueError) else 404, str(exc).strip("'\""))
    except Exception as exc:  # noqa: BLE001 - the registry or Kafka is down: not the caller's
        log.warning("admin action failed", exc_info=True)
        return error(503, f"registry or Kafka unavailable: {exc}")
    return web.json_response({"champion": mv.to_dict(), "swap": "requested"}, status=202)


async def healthz(request: web.Request) -> web.Response:
    models = {name: (live.current.version if live.current else None)
              for name, live in request.app[MODELS].items()}
    return web.json_response({"status": "ok", "models": models})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = m.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _keep_models_fresh(app: web.Application) -> None:
    interval = app[SETTINGS].model_refresh_seconds
    while True:
        for name, live in app[MODELS].items():
            try:
                if await live.refresh():
                    m.MODEL_SWAPS.labels(name, "api").inc()
                    log.info("serving %s model %s", name, live.current.version)
            except Exception:  # noqa: BLE001 - keep serving the model we have
                log.warning("could not refresh the %s model", name, exc_info=True)
        await asyncio.sleep(interval)


async def _resources(app: web.Application):
    client = connect(app[SETTINGS])
    app[REDIS] = client
    app[MODELS] = {name: LiveModel(SnapshotStore(client, _keys(app, name))) for name in PIPELINES}
    app[SPACES] = {
        name: EmbeddingSpace(app[SETTINGS], spec, EmbeddingStore(client, _keys(app, name)), "api")
        for name, spec in PIPELINES.items() if spec.embeddings is not None}
    refresher = asyncio.create_task(_keep_models_fresh(app))
    yield
    refresher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await refresher
    for space in app[SPACES].values():
        await space.close()
    await client.aclose()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[observe_and_shape_errors], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[ENGINES] = {name: FeatureEngine(spec) for name, spec in PIPELINES.items()}
    app.cleanup_ctx.append(_resources)
    app.router.add_post("/v1/score/{pipeline}", score_event)
    app.router.add_get("/v1/models/{pipeline}", model_status)
    # Admin actions; they will need the admin role once the API has authentication.
    app.router.add_post("/v1/models/{pipeline}/promote", promote_model)
    app.router.add_post("/v1/models/{pipeline}/rollback", rollback_model)
    app.router.add_post("/v1/models/{pipeline}/retrain", retrain_model)
    app.router.add_post("/v1/similar/{pipeline}", similar_cases)
    app.router.add_delete("/v1/entities/{pipeline}/{entity}", forget_entity)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
