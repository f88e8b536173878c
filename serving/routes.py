"""The API's one route table: every handler module's routes, in the order they are
matched, and the paths open without a token. :func:`serving.app.create_app` mounts it;
:mod:`serving.openapi` describes it."""

from __future__ import annotations

from driftline.adapters.config import Settings
from serving import dashboard
from serving.handlers import embeddings, models, scores, service

ROUTES = scores.ROUTES + models.ROUTES + embeddings.ROUTES + service.ROUTES + dashboard.ROUTES


def open_paths(settings: Settings) -> frozenset[str]:
    """The paths that need no token: ``DRIFTLINE_API_OPEN_PATHS``, and the dashboard's files
    when its page is open."""
    configured = frozenset(p.strip() for p in settings.api_open_paths.split(",") if p.strip())
    return dashboard.open_paths(configured)
