"""The scoring API (``driftline serve``), an aiohttp application.

Routes (the OpenAPI description is at ``/openapi.json``):

* ``POST /v1/score/{pipeline}`` and ``POST /v1/score/{pipeline}:batch`` score events with
  :class:`serving.scoring.PipelineScorer`: features as the worker computes them, the model
  in memory (swapped by a background task for each newer snapshot), the top feature
  contributions, and the fallback model, marked ``degraded``, when the features or the
  model are not there in time;
* ``/v1/models/...`` reports model versions and, for admins, promotes, rolls back,
  retrains and splits traffic between champion and challenger (:mod:`serving.traffic`);
* ``/v1/similar/...`` and ``/v1/entities/...`` are in :mod:`serving.similar`;
* ``/healthz``, ``/metrics`` and ``/openapi.json`` are open; everything else needs a bearer
  token with a role (:mod:`serving.auth`) once tokens are configured.

Every error is a JSON body ``{"error": ..., "fields": {...}}`` with a 4xx status when the
caller is at fault; a failure of ours is a 5xx with the same shape, never HTML.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from driftline.adapters.config import Settings
from driftline.adapters.stores import EmbeddingStore, RedisKeys, connect
from driftline.adapters.vectors import EmbeddingSpace
from monitoring import metrics as m
from online_models import lifecycle
from serving import dashboard, similar
from serving.auth import Tokens, allows, parse_tokens
from serving.bodies import read_body
from serving.errors import error
from serving.scoring import UNAVAILABLE, Caches, PipelineScorer, Score, Unavailable
from serving.similar import SPACES
from serving.traffic import TrafficRequest, set_split
from streams.pipelines import PIPELINES
from streams.schemas import InvalidRecord, decode_json, parse

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
SCORERS = web.AppKey("scorers", dict)
REDIS = web.AppKey("redis", object)
REGISTRY = web.AppKey("registry", object)
TOKENS = web.AppKey("tokens", Tokens)
OPEN_PATHS = web.AppKey("open_paths", frozenset)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
# NaN and Infinity are not JSON: a non-finite number left in a score is a 500, never sent.
FINITE_JSON = functools.partial(json.dumps, allow_nan=False)


def requires(role: str):
    """Mark a handler as needing ``role``; an unmarked one needs ``admin`` (a route added
    without thought is closed, not open)."""
    def mark(handler):
        handler.role = role
        return handler
    return mark


@web.middleware
async def observe_and_shape_errors(request: web.Request, handler):
    """Count and time every request, and turn every failure into a JSON body."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource \
        else "unmatched"
    method = request.method if request.method in METHODS else "other"  # bounded labels
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        response = error(413, "request body too large",
                         {"$": f"at most {request.app[SETTINGS].api_max_body_bytes} bytes"})
    except (web.RequestPayloadError, HttpProcessingError) as exc:  # e.g. broken chunking
        response = error(400, "unreadable request body", {"$": str(exc) or type(exc).__name__})
    except web.HTTPException as exc:
        response = error(exc.status, exc.reason, getattr(exc, "fields", None))
        for name in ("Allow", "WWW-Authenticate"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    except Exception:  # noqa: BLE001 - the caller still gets JSON, the log gets the trace
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error(500, "internal error")
    status = str(response.status)
    m.HTTP_REQUESTS.labels(route, method, status).inc()
    m.HTTP_SECONDS.labels(route, method, status).observe(time.perf_counter() - started)
    return response


@web.middleware
async def authenticate(request: web.Request, handler):
    """A bearer token with the handler's role, unless the path is open or no tokens are
    configured. 401: no token or an unknown one; 403: a known token without the role."""
    tokens = request.app[TOKENS]
    if not tokens.enabled or request.path in request.app[OPEN_PATHS]:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    who = tokens.identify(token.strip()) if scheme.lower() == "bearer" else None
    if who is None:
        m.AUTH_FAILURES.labels("401").inc()
        response = error(401, "a valid bearer token is required",
                         {"Authorization": "missing" if not header else "unknown token"})
        response.headers["WWW-Authenticate"] = 'Bearer realm="driftline"'
        return response
    needed = getattr(request.match_info.handler, "role", "admin")
    if not allows(who[1], needed):
        m.AUTH_FAILURES.labels("403").inc()
        return error(403, f"this needs the {needed} role",
                     {"Authorization": f"token {who[0]!r} has the {who[1]} role"})
    return await handler(request)


def _pipeline_or_404(request: web.Request) -> str:
    """The path's pipeline name; a 404 naming the field when it is not declared."""
    name = request.match_info["pipeline"]
    if name not in PIPELINES:
        exc = web.HTTPNotFound(reason=f"unknown pipeline {name!r}")
        exc.fields = {"pipeline": "not declared"}
        raise exc
    return name


# ---- scoring ------------------------------------------------------------------------------

@requires("scorer")
async def score_event(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    explain = _explain(request)
    try:
        event = parse(PIPELINES[name].event_type, await read_body(request))
    except InvalidRecord as exc:
        return error(422, "invalid event", exc.errors)
    try:
        score = await request.app[SCORERS][name].score(event, explain)
    except Unavailable as exc:
        return error(503, str(exc))
    return web.json_response(_score_body(name, score), dumps=FINITE_JSON)


@requires("scorer")
async def score_batch(request: web.Request) -> web.Response:
    """Up to ``DRIFTLINE_API_BATCH_MAX`` events in ``{"events": [...]}``, each scored as
    ``POST /v1/score/{pipeline}`` would; one invalid event fails the whole batch, with
    every bad field named by its index (``events.3.amount``)."""
    name = _pipeline_or_404(request)
    pipeline = PIPELINES[name]
    explain = _explain(request)
    limit = request.app[SETTINGS].api_batch_max
    try:
        body = decode_json(await read_body(request))
    except InvalidRecord as exc:
        return error(422, "invalid batch", exc.errors)
    items = body.get("events") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        return error(422, "invalid batch", {"events": "a non-empty list of events is required"})
    if len(items) > limit:
        return error(413, "batch too large", {"events": f"at most {limit} events per batch"})
    events, errors = [], {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors[f"events.{i}"] = f"expected a JSON object, got {type(item).__name__}"
            continue
        try:
            events.append(parse(pipeline.event_type, item))
        except InvalidRecord as exc:
            errors.update({f"events.{i}.{k}": v for k, v in exc.errors.items()})
    if errors:
        return error(422, "invalid events", errors)
    m.BATCH_SIZE.labels(name).observe(len(events))
    try:
        scores = await request.app[SCORERS][name].score_batch(events, explain)
    except Unavailable as exc:
        return error(503, str(exc))
    return web.json_response({"pipeline": name,
                              "degraded": any(s.degraded for s in scores),
                              "results": [_score_body(name, s) for s in scores]},
                             dumps=FINITE_JSON)


def _explain(request: web.Request) -> bool:
    """``?explain=false`` leaves the contributions out (one prediction per feature saved)."""
    value = request.query.get("explain", "true").lower()
    if value not in ("true", "false", "1", "0"):
        raise _unprocessable({"explain": "true or false"})
    return value in ("true", "1")


def _score_body(name: str, s: Score) -> dict:
    body = {
        "pipeline": name,
        "event_id": s.event_id,
        "entity": s.entity,
        "prediction": s.prediction,
        "model_version": s.model_version,
        "variant": s.variant,
        "degraded": s.degraded,
        "contributions": [{"feature": c.feature, "value": c.value,
                           "contribution": c.contribution} for c in s.contributions],
        "features": s.features,
        "entity_known": s.entity_known,
    }
    if s.degraded:
        body["degraded_reason"] = s.degraded_reason
    if PIPELINES[name].task == "binary":
        body["probability"] = s.prediction
    return body


def _keys(app: web.Application, name: str) -> RedisKeys:
    return RedisKeys(app[SETTINGS].redis_prefix, name)


# ---- embeddings: similar cases, erasure ---------------------------------------------------

@requires("scorer")
async def similar_cases(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    return await similar.similar(request, PIPELINES[name], request.app[SCORERS][name].engine,
                                 request.app[REDIS], _keys(request.app, name))


@requires("admin")
async def forget_entity(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    # This process forgets the cached state now; the others within the cache's TTL.
    request.app[SCORERS][name].evict(request.match_info["entity"])
    return await similar.forget_entity(request, PIPELINES[name], request.app[REDIS],
                                       _keys(request.app, name))


# ---- models: versions, prequential metrics, registry; admin actions ------------------------

def _registry(app: web.Application):
    # MLflow is imported on the first models request only; the scoring path never needs it.
    if app.get(REGISTRY) is None:
        from online_models.registry import Registry

        app[REGISTRY] = Registry.from_settings(app[SETTINGS])
    return app[REGISTRY]


@requires("scorer")
async def model_status(request: web.Request) -> web.Response:
    """What serves, how each recent version did (prequential), the traffic split, and the
    registry."""
    name = _pipeline_or_404(request)
    scorer: PipelineScorer = request.app[SCORERS][name]
    live = scorer.champion
    try:
        raw = {k.decode(): v.decode() for k, v in
               (await request.app[REDIS].hgetall(_keys(request.app, name).learner)).items()}
        learner = {k: raw[k] for k in ("version", "revision", "updates", "duplicates",
                                        "next_offset", "published_at") if k in raw}
    except UNAVAILABLE as exc:  # what this process holds is still worth having
        raw, learner = {}, {"error": f"Redis unavailable: {type(exc).__name__}"}
    body = {
        "pipeline": name,
        "task": PIPELINES[name].task,
        "serving": {"version": live.current.version if live.current else None,
                    "published_at": live.current.published_at if live.current else None},
        "traffic": scorer.split.model_dump() if scorer.split else None,
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


async def _json_object(request: web.Request) -> dict:
    try:
        payload = decode_json(await read_body(request))
    except InvalidRecord as exc:
        raise _unprocessable(exc.errors) from None
    if not isinstance(payload, dict):
        raise _unprocessable({"$": "expected a JSON object"})
    return payload


def _unprocessable(fields: dict[str, str]) -> web.HTTPException:
    exc = web.HTTPUnprocessableEntity(reason="invalid body")
    exc.fields = fields
    return exc


@requires("admin")
async def promote_model(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    version = (await _json_object(request)).get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**31:
        return error(422, "invalid body", {"version": "a registry version number is required"})
    return await _admin_action(request, lambda s, r: lifecycle.promote(s, r, name, version))


@requires("admin")
async def rollback_model(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    return await _admin_action(request, lambda s, r: lifecycle.rollback(s, r, name))


@requires("admin")
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


@requires("admin")
async def set_traffic(request: web.Request) -> web.Response:
    """Serve a registry version as challenger: ``split`` (a canary, an A/B test) or
    ``shadow``. Every API process picks it up within ``DRIFTLINE_MODEL_REFRESH_SECONDS``."""
    name = _pipeline_or_404(request)
    payload = await _json_object(request)
    try:
        request_ = TrafficRequest.model_validate(payload)
    except ValidationError as exc:
        raise _unprocessable({".".join(map(str, e["loc"])) or "$": e["msg"]
                              for e in exc.errors(include_url=False)}) from None
    app = request.app
    try:
        registry = await asyncio.to_thread(_registry, app)
        split = await set_split(app[SETTINGS], registry, name, request_.mode,
                                request_.challenger, request_.percent, client=app[REDIS])
    except KeyError as exc:
        return error(404, str(exc).strip("'\""), {"challenger": "no such registry version"})
    except UNAVAILABLE:
        log.warning("could not store the split", exc_info=True)
        return error(503, "Redis unavailable: the split was not made; retry")
    except Exception:  # noqa: BLE001 - the registry is down: not the caller's fault
        log.warning("could not load the challenger", exc_info=True)
        return error(503, "model registry unavailable: the split was not made; retry")
    log.info("%s: traffic %s", name, split.model_dump())
    return web.json_response({"pipeline": name, "traffic": split.model_dump()}, status=202)


@requires("admin")
async def end_traffic(request: web.Request) -> web.Response:
    name = _pipeline_or_404(request)
    try:
        await set_split(request.app[SETTINGS], None, name, "off", client=request.app[REDIS])
    except UNAVAILABLE:
        log.warning("could not end the split", exc_info=True)
        return error(503, "Redis unavailable: the split goes on; retry")
    return web.json_response({"pipeline": name, "traffic": None})


# ---- open endpoints --------------------------------------------------------------------

@requires("scorer")
async def healthz(request: web.Request) -> web.Response:
    models = {name: s.serving_version for name, s in request.app[SCORERS].items()}
    return web.json_response({"status": "ok", "models": models})


@requires("scorer")
async def openapi(request: web.Request) -> web.Response:
    from serving.openapi import document

    return web.json_response(document(request.app[SETTINGS]))


@requires("scorer")
async def metrics(request: web.Request) -> web.Response:
    body, content_type = m.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _keep_models_fresh(app: web.Application) -> None:
    interval = app[SETTINGS].model_refresh_seconds
    failing: set[str] = set()  # logged once when it starts failing, once when it recovers
    while True:
        for name, scorer in app[SCORERS].items():
            try:
                if await scorer.refresh():
                    m.swapped(name, "api", scorer.champion.current.oldest_label_at)
                    log.info("serving %s model %s", name, scorer.champion.current.version)
            except Exception as exc:  # noqa: BLE001 - keep serving the model we have
                if name not in failing:
                    failing.add(name)
                    log.warning("could not refresh the %s model, serving the one in memory: "
                                "%r", name, exc)
                continue
            if name in failing:
                failing.discard(name)
                log.info("refreshing the %s model again", name)
        await asyncio.sleep(interval)


async def _resources(app: web.Application):
    settings = app[SETTINGS]
    client = connect(settings)
    app[REDIS] = client
    caches = Caches.from_settings(settings)
    app[SPACES] = {
        name: EmbeddingSpace(settings, spec, EmbeddingStore(client, _keys(app, name)), "api")
        for name, spec in PIPELINES.items() if spec.embeddings is not None}
    app[SCORERS] = {
        name: PipelineScorer(settings, spec, client, caches,
                             app[SPACES].get(name) if spec.embeddings
                             and spec.embeddings.neighbour_feature else None)
        for name, spec in PIPELINES.items()}
    # Load the models before the first request (bounded: Redis may be down, and then the
    # fallback's prior answers until it is back).
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await asyncio.gather(*(s.refresh() for s in app[SCORERS].values()))
    # What startup made (imports, models) lives as long as the process: out of the garbage
    # collector's sight, a full collection no longer walks it (about 100 ms here, a stall
    # that blew request deadlines in the load benchmark).
    gc.freeze()
    refresher = asyncio.create_task(_keep_models_fresh(app))
    app[dashboard.SAMPLER] = dashboard.Sampler(settings, client, app[SCORERS]).start()
    yield
    await app[dashboard.SAMPLER].stop()
    refresher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await refresher
    for space in app[SPACES].values():
        await space.close()
    await client.aclose()


def create_app(settings: Settings) -> web.Application:
    """The application; raises ValueError naming a malformed setting."""
    tokens = parse_tokens(settings.api_tokens)
    if not tokens.enabled:
        log.warning("authentication is off: DRIFTLINE_API_TOKENS is empty, so anyone who "
                    "reaches the API may score and act as admin")
    # Bodies are inflated by serving.bodies, within the limit, and only when read.
    app = web.Application(middlewares=[observe_and_shape_errors, authenticate],
                          client_max_size=settings.api_max_body_bytes,
                          handler_args={"auto_decompress": False})
    app[SETTINGS] = settings
    app[TOKENS] = tokens
    app[OPEN_PATHS] = frozenset(p.strip() for p in settings.api_open_paths.split(",")
                                if p.strip())
    app.cleanup_ctx.append(_resources)
    # The batch route first: "{pipeline}" alone would match "fraud:batch".
    app.router.add_post("/v1/score/{pipeline}:batch", score_batch)
    app.router.add_post("/v1/score/{pipeline}", score_event)
    app.router.add_get("/v1/models/{pipeline}", model_status)
    app.router.add_post("/v1/models/{pipeline}/promote", promote_model)
    app.router.add_post("/v1/models/{pipeline}/rollback", rollback_model)
    app.router.add_post("/v1/models/{pipeline}/retrain", retrain_model)
    app.router.add_put("/v1/models/{pipeline}/traffic", set_traffic)
    app.router.add_delete("/v1/models/{pipeline}/traffic", end_traffic)
    app.router.add_post("/v1/similar/{pipeline}", similar_cases)
    app.router.add_delete("/v1/entities/{pipeline}/{entity}", forget_entity)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/dashboard", requires("scorer")(dashboard.dashboard_page))
    app.router.add_get("/dashboard/data", requires("scorer")(dashboard.dashboard_data))
    return app
