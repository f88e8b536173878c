"""The service's own endpoints: liveness, Prometheus metrics, and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from monitoring import metrics
from serving.keys import DESCRIPTION, SCORERS
from serving.routing import Answer, RouteTable
from serving.schemas import Health

ROUTES = RouteTable()


@ROUTES.get("/healthz", role="scorer", tag="service",
            summary="Liveness, and the model version each pipeline serves",
            answers=[Answer(200, "Up.", Health)])
async def healthz(request: web.Request) -> web.Response:
    models = {name: s.serving_version for name, s in request.app[SCORERS].items()}
    return web.json_response({"status": "ok", "models": models})


@ROUTES.get("/metrics", role="scorer", tag="service", summary="Prometheus metrics",
            answers=[Answer(200, "The Prometheus text exposition format.",
                            schema={"type": "string"}, media="text/plain")])
async def prometheus_metrics(request: web.Request) -> web.Response:
    body, content_type = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


@ROUTES.get("/openapi.json", role="scorer", tag="service", summary="This description",
            answers=[Answer(200, "The OpenAPI 3.1 document.",
                            schema={"type": "object", "required": ["openapi", "paths"]})])
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[DESCRIPTION]())
