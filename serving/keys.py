"""The API application's state, as typed ``web.AppKey``\\ s (aiohttp's idiom): what
:func:`serving.app.create_app` and its cleanup context put in the app, and handlers read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from driftline.adapters.config import Settings
from serving.auth import Tokens

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", Tokens)
OPEN_PATHS = web.AppKey("open_paths", frozenset)   # paths that need no token
SCORERS = web.AppKey("scorers", dict)             # pipeline -> serving.scoring.PipelineScorer
SPACES = web.AppKey("spaces", dict)               # pipeline -> its EmbeddingSpace, if declared
REDIS = web.AppKey("redis", object)               # the redis.asyncio client
REGISTRY = web.AppKey("registry", object)         # the model registry, made on first use
DESCRIPTION = web.AppKey("description", Callable[[], dict[str, Any]])  # the OpenAPI document
