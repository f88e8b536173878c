"""The scoring API (``driftline serve``), an aiohttp application.

Its routes are one table (:mod:`serving.routes`), each declared with its handler
(:mod:`serving.handlers`, :mod:`serving.dashboard`): scores (``POST /v1/score/{p}`` and its
``:batch`` form) by :class:`serving.scoring.PipelineScorer`, which knows nothing of HTTP;
model status and, for admins, promotions, rollbacks, retrains and traffic splits;
similar-case search and erasure; ``/healthz``, ``/metrics``, ``/openapi.json`` (generated
from the table, :mod:`serving.openapi`) and the dashboard. Every route needs a bearer token
with its role once tokens are configured, except the open paths (:mod:`serving.middleware`).

Every error is a JSON body ``{"error": ..., "fields": {...}}`` with a 4xx status when the
caller is at fault; a failure of ours is a 5xx with the same shape, never HTML
(:mod:`serving.errors`).

This module builds the application and owns its resources (a cleanup context): the Redis
client, the embedding spaces, a scorer per pipeline with its models, kept fresh by a
background task, and the dashboard's sampler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging

from aiohttp import web

from driftline.adapters.config import Settings
from driftline.adapters.stores import EmbeddingStore, RedisKeys, connect
from driftline.adapters.vectors import EmbeddingSpace
from monitoring import metrics
from serving import dashboard
from serving.auth import parse_tokens
from serving.keys import DESCRIPTION, OPEN_PATHS, REDIS, SCORERS, SETTINGS, SPACES, TOKENS
from serving.middleware import authenticate, observe_and_shape_errors
from serving.openapi import document
from serving.routes import ROUTES, open_paths
from serving.routing import mount
from serving.scoring import Caches, PipelineScorer
from streams.pipelines import PIPELINES

log = logging.getLogger(__name__)


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
    app[OPEN_PATHS] = open_paths(settings)
    app[DESCRIPTION] = functools.partial(document, settings)
    app.cleanup_ctx.append(_resources)
    mount(app, ROUTES)
    return app


async def _resources(app: web.Application):
    settings = app[SETTINGS]
    client = connect(settings)
    app[REDIS] = client
    caches = Caches.from_settings(settings)
    app[SPACES] = {
        name: EmbeddingSpace(settings, spec, EmbeddingStore(client, _keys(settings, name)),
                             "api")
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


def _keys(settings: Settings, name: str) -> RedisKeys:
    return RedisKeys(settings.redis_prefix, name)


async def _keep_models_fresh(app: web.Application) -> None:
    interval = app[SETTINGS].model_refresh_seconds
    failing: set[str] = set()  # logged once when it starts failing, once when it recovers
    while True:
        for name, scorer in app[SCORERS].items():
            try:
                if await scorer.refresh():
                    metrics.swapped(name, "api", scorer.champion.current.oldest_label_at)
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
