"""``/v1/models/{pipeline}``: what serves, how recent versions did, the registry; and, for
admins, promotions, rollbacks, retrains and traffic splits (:mod:`serving.traffic`)."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from driftline.errors import DriftlineError, Invalid, NotFound, Unavailable
from online_models import lifecycle
from serving.handlers.common import json_object, keys_of, pipeline_of, registry_of
from serving.keys import REDIS, SCORERS, SETTINGS
from serving.routing import Answer, RouteTable
from serving.schemas import ModelStatus, PromoteRequest, RetrainRequested, Swap, TrafficAnswer
from serving.scoring import UNAVAILABLE, PipelineScorer
from serving.traffic import TrafficRequest, set_split
from streams.schemas import InvalidRecord, parse

log = logging.getLogger(__name__)

ROUTES = RouteTable()
REFRESH = "every API process serves it within DRIFTLINE_MODEL_REFRESH_SECONDS"
LEARNER_FIELDS = ("version", "revision", "updates", "duplicates", "next_offset", "published_at")


@ROUTES.get("/v1/models/{pipeline}", role="scorer", tag="models",
            summary="What serves {pipeline}, how recent versions did, the registry",
            answers=[Answer(200, "The model status; its parts vary with what the learner "
                                 "has published.", ModelStatus)])
async def model_status(request: web.Request) -> web.Response:
    """What serves, how each recent version did (prequential), the traffic split, and the
    registry."""
    spec = pipeline_of(request)
    scorer: PipelineScorer = request.app[SCORERS][spec.name]
    live = scorer.champion
    try:
        raw = {k.decode(): v.decode() for k, v in
               (await request.app[REDIS].hgetall(keys_of(request, spec.name).learner)).items()}
        learner = {k: raw[k] for k in LEARNER_FIELDS if k in raw}
    except UNAVAILABLE as exc:  # what this process holds is still worth having
        raw, learner = {}, {"error": f"Redis unavailable: {type(exc).__name__}"}
    body = {
        "pipeline": spec.name,
        "task": spec.task,
        "serving": {"version": live.current.version if live.current else None,
                    "published_at": live.current.published_at if live.current else None},
        "traffic": scorer.split.model_dump() if scorer.split else None,
        "learner": learner,
        "prequential": json.loads(raw.get("metrics", "{}")),
        "feature_drift": json.loads(raw.get("feature_drift", "{}")),
    }
    try:
        versions = await asyncio.to_thread(lambda: registry_of(request.app).versions(spec.name))
        body["registry"] = {
            "champion": next((v.version for v in versions if v.champion), None),
            "versions": [v.to_dict() for v in versions],
        }
    except Exception as exc:  # noqa: BLE001 - the rest of the status is still worth having
        log.warning("registry unavailable", exc_info=True)
        body["registry"] = {"error": f"registry unavailable: {exc}"}
    return web.json_response(body)


@ROUTES.post("/v1/models/{pipeline}/promote", role="admin", tag="models",
             summary="Make a registry version the {pipeline} champion",
             description=f"The learner swaps it in; {REFRESH}.", body=PromoteRequest,
             answers=[Answer(202, "The swap is requested.", Swap)],
             errors={404: "No such registry version.", 409: None, 413: None, 422: None,
                     503: "The registry or Kafka is unavailable."})
async def promote_model(request: web.Request) -> web.Response:
    spec = pipeline_of(request)
    try:
        version = parse(PromoteRequest, await json_object(request)).version
    except InvalidRecord:
        raise Invalid({"version": "a registry version number is required"},
                      "invalid body") from None
    return await _swap(request, lambda s, r: lifecycle.promote(s, r, spec.name, version))


@ROUTES.post("/v1/models/{pipeline}/rollback", role="admin", tag="models",
             summary="Serve the {pipeline} champion before the current one again",
             answers=[Answer(202, "The swap is requested.", Swap)],
             errors={404: "The version to roll back to no longer exists.",
                     409: "No champion, or none before it, to roll back to.",
                     503: "The registry or Kafka is unavailable."})
async def rollback_model(request: web.Request) -> web.Response:
    spec = pipeline_of(request)
    return await _swap(request, lambda s, r: lifecycle.rollback(s, r, spec.name))


async def _swap(request: web.Request, action) -> web.Response:
    app = request.app
    try:
        version = await asyncio.to_thread(lambda: action(app[SETTINGS], registry_of(app)))
    except DriftlineError:  # not found, or a conflict with the registry's state
        raise
    except Exception as exc:  # the registry or Kafka is down: not the caller's fault
        log.warning("admin action failed", exc_info=True)
        raise Unavailable(f"registry or Kafka unavailable: {exc}") from exc
    return web.json_response({"champion": version.to_dict(), "swap": "requested"}, status=202)


@ROUTES.post("/v1/models/{pipeline}/retrain", role="admin", tag="models",
             summary="Ask the retrainer for a {pipeline} retrain now",
             answers=[Answer(202, "The request is on the pipeline's control topic.",
                             RetrainRequested)],
             errors={503: "Kafka is unavailable."})
async def retrain_model(request: web.Request) -> web.Response:
    spec = pipeline_of(request)
    try:
        await asyncio.to_thread(lifecycle.request_retrain, request.app[SETTINGS], spec.name,
                                "api")
    except Exception as exc:  # Kafka is down: not the caller's fault
        log.warning("retrain request failed", exc_info=True)
        raise Unavailable(f"Kafka unavailable: {exc}") from exc
    return web.json_response({"pipeline": spec.name, "retrain": "requested"}, status=202)


@ROUTES.put("/v1/models/{pipeline}/traffic", role="admin", tag="models",
            summary="Serve a {pipeline} registry version as challenger (split or shadow)",
            body=TrafficRequest,
            answers=[Answer(202, f"The split is set; {REFRESH}.", TrafficAnswer)],
            errors={404: "No such registry version.", 413: None, 422: None,
                    503: "The registry is unavailable."})
async def set_traffic(request: web.Request) -> web.Response:
    """Serve a registry version as challenger: ``split`` (a canary, an A/B test) or
    ``shadow``. Every API process picks it up within ``DRIFTLINE_MODEL_REFRESH_SECONDS``."""
    spec = pipeline_of(request)
    try:
        wanted = parse(TrafficRequest, await json_object(request))
    except InvalidRecord as exc:
        raise Invalid(exc.fields, "invalid body") from None
    app = request.app
    try:
        registry = await asyncio.to_thread(registry_of, app)
        split = await set_split(app[SETTINGS], registry, spec.name, wanted.mode,
                                wanted.challenger, wanted.percent, client=app[REDIS])
    except NotFound as exc:
        raise NotFound(str(exc), fields={"challenger": "no such registry version"}) from None
    except UNAVAILABLE as exc:
        log.warning("could not store the split", exc_info=True)
        raise Unavailable("Redis unavailable: the split was not made; retry") from exc
    except Exception as exc:  # the registry is down: not the caller's fault
        log.warning("could not load the challenger", exc_info=True)
        raise Unavailable("model registry unavailable: the split was not made; retry") \
            from exc
    log.info("%s: traffic %s", spec.name, split.model_dump())
    return web.json_response({"pipeline": spec.name, "traffic": split.model_dump()},
                             status=202)


@ROUTES.delete("/v1/models/{pipeline}/traffic", role="admin", tag="models",
               summary="End the {pipeline} traffic split: the champion serves everything",
               answers=[Answer(200, "The split is over.", TrafficAnswer)],
               errors={503: "Redis is unavailable: the split goes on."})
async def end_traffic(request: web.Request) -> web.Response:
    spec = pipeline_of(request)
    try:
        await set_split(request.app[SETTINGS], None, spec.name, "off", client=request.app[REDIS])
    except UNAVAILABLE as exc:
        log.warning("could not end the split", exc_info=True)
        raise Unavailable("Redis unavailable: the split goes on; retry") from exc
    return web.json_response({"pipeline": spec.name, "traffic": None})
