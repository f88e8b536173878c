"""The dashboard's HTTP handlers: the page, the files it loads, and the JSON it polls.

The page is a static file (``static/index.html``) with its script and styles beside it, and
uPlot, the chart library, vendored under ``static/vendor/`` (``scripts/vendor-uplot.sh``
fetches it again): the page loads nothing from elsewhere, so it works on a machine without
internet access and its Content-Security-Policy allows only its own origin. Scripts and
styles are files, not inline, so the policy needs no ``'unsafe-inline'``.

:func:`dashboard_static` serves only the files of :data:`ASSETS`, by name: a request names
an entry of that table, never a path, so no ``..`` reaches the file system. The files are
read once (they ship with the package and do not change under a running process) and
served with an ETag, so a browser revalidates them instead of downloading them again;
the page itself and its data are never cached (they are live).

The routes are declared here, in :data:`ROUTES` (:mod:`serving.routing`), for the API's
table and its OpenAPI description. The page's files are as open as the page:
:func:`open_paths` adds them to the open paths when ``/dashboard`` is one of them.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from aiohttp import web

from driftline.errors import Invalid, NotFound
from serving.dashboard.sampler import Sampler
from serving.dashboard.view import finite
from serving.routing import Answer, RouteTable
from streams.pipelines import PIPELINES

SAMPLER = web.AppKey("dashboard_sampler", Sampler)
ROUTES = RouteTable()

STATIC = resources.files(__package__) / "static"
PAGE_FILE = "index.html"
STATIC_ROUTE = "/dashboard/static/{name}"
# What the page loads: its URL name -> (the file under static/, its content type).
ASSETS: dict[str, tuple[str, str]] = {
    "dashboard.js": ("dashboard.js", "text/javascript"),
    "dashboard.css": ("dashboard.css", "text/css"),
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript"),
    "uPlot.min.css": ("vendor/uPlot.min.css", "text/css"),
}
# Their paths: open to whoever may open the page (the page is useless without them).
STATIC_PATHS = frozenset(STATIC_ROUTE.format(name=name) for name in ASSETS)
PAGE_PATH = "/dashboard"

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # The page loads nothing from elsewhere and may only poll its own origin; its script
    # and styles are files of that origin, never inline.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
# The page's files: the same policy, but revalidated with their ETag rather than refetched.
ASSET_HEADERS = {**PAGE_HEADERS, "Cache-Control": "no-cache"}


@functools.cache
def _read(relative: str) -> tuple[bytes, str]:
    """A file under ``static/`` and its ETag (a digest of its bytes)."""
    body = (STATIC / relative).read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:32]


def open_paths(configured: frozenset[str]) -> frozenset[str]:
    """The open paths (``DRIFTLINE_API_OPEN_PATHS``), with the page's files when the page
    is open, and their route's template (as the OpenAPI description names it).

    >>> sorted(open_paths(frozenset({"/healthz"})))
    ['/healthz']
    >>> sorted(open_paths(frozenset({"/dashboard"})))[:3]
    ['/dashboard', '/dashboard/static/dashboard.css', '/dashboard/static/dashboard.js']
    >>> STATIC_ROUTE in open_paths(frozenset({"/dashboard"}))
    True
    """
    if PAGE_PATH not in configured:
        return configured
    return configured | STATIC_PATHS | {STATIC_ROUTE}


@ROUTES.get(PAGE_PATH, role="scorer", tag="service",
            summary="The live dashboard: throughput, latency, the prequential metric with drift "
                    "detections and promotions, the model versions",
            answers=[Answer(200, "A static HTML page; it loads its script, styles and chart "
                                 "library from `/dashboard/static/` and polls "
                                 "`/dashboard/data`.",
                            schema={"type": "string"}, media="text/html")])
async def dashboard_page(request: web.Request) -> web.Response:
    """The dashboard page: static HTML; its script, styles and uPlot come from
    :func:`dashboard_static`, its figures from :func:`dashboard_data`."""
    body, _ = _read(PAGE_FILE)
    return web.Response(body=body, content_type="text/html", charset="utf-8",
                        headers=PAGE_HEADERS)


@ROUTES.get(STATIC_ROUTE, role="scorer", tag="service",
            summary="A file of the dashboard page: its script, its styles, uPlot",
            parameters=({"name": "name", "in": "path", "required": True,
                         "description": "the file's name", "schema": {
                             "type": "string", "enum": sorted(ASSETS)}},),
            answers=[Answer(200, "The file (JavaScript or CSS), with its ETag; a matching "
                                 "`If-None-Match` is a 304 without a body.",
                            schema={"type": "string"}, media="text/*")],
            errors={404: "No such file of the dashboard."})
async def dashboard_static(request: web.Request) -> web.Response:
    """One file of :data:`ASSETS` (``GET /dashboard/static/{name}``); any other name is a
    404. A matching ``If-None-Match`` is a 304 without the body."""
    name = request.match_info.get("name", "")
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound("no such dashboard file",
                       fields={"name": "one of " + ", ".join(sorted(ASSETS))})
    relative, content_type = asset
    body, etag = _read(relative)
    if any(tag.value in (etag, "*") for tag in request.if_none_match or ()):
        response = web.Response(status=304, headers=ASSET_HEADERS)
    else:
        response = web.Response(body=body, content_type=content_type, charset="utf-8",
                                headers=ASSET_HEADERS)
    response.etag = etag
    return response


@ROUTES.get("/dashboard/data", role="scorer", tag="service",
            summary="The dashboard's samples (the last 30 minutes) and current figures",
            parameters=({"name": "since", "in": "query", "required": False,
                         "description": "only the samples after this time (the `now` of an "
                                        "earlier answer)",
                         "schema": {"type": "number"}},),
            answers=[Answer(200, "Samples, markers and current figures per pipeline, and the "
                                 "API's.",
                            schema={"type": "object",
                                    "required": ["now", "interval", "window", "worker", "redis",
                                                 "api", "pipelines", "process"],
                                    "properties": {"pipelines": {
                                        "type": "object",
                                        "propertyNames": {"enum": list(PIPELINES)}}}})],
            errors={422: "`since` is not a finite number."})
async def dashboard_data(request: web.Request) -> web.Response:
    """What the page polls: ``?since=<t>`` gives only the samples after ``t`` (the ``now``
    of an earlier answer)."""
    raw = request.query.get("since")
    since = None
    if raw is not None:
        since = finite(raw)
        if since is None:
            raise Invalid({"since": "a number: the time of a sample"}, "invalid query")
    return web.json_response(request.app[SAMPLER].data(since),
                             headers={"Cache-Control": "no-store"})
