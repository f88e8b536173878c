"""The API's middlewares: every request counted, timed and answered in the one error shape
(:mod:`serving.errors`); every route but the open ones behind a bearer token with its role."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from driftline.errors import DriftlineError
from monitoring import metrics
from serving.auth import allows
from serving.errors import error, error_response
from serving.keys import OPEN_PATHS, SETTINGS, TOKENS
from serving.routing import role_of

log = logging.getLogger(__name__)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


@web.middleware
async def observe_and_shape_errors(request: web.Request, handler):
    """Count and time every request, and turn every failure into a JSON body."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    method = request.method if request.method in METHODS else "other"  # bounded labels
    started = time.perf_counter()
    try:
        response = await handler(request)
    except DriftlineError as exc:
        response = error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        response = error(413, "request body too large",
                         {"$": f"at most {request.app[SETTINGS].api_max_body_bytes} bytes"})
    except (web.RequestPayloadError, HttpProcessingError) as exc:  # e.g. broken chunking
        response = error(400, "unreadable request body", {"$": str(exc) or type(exc).__name__})
    except web.HTTPException as exc:  # aiohttp's own: 404 and 405 of the router
        response = error(exc.status, exc.reason)
        for name in ("Allow", "WWW-Authenticate"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    except Exception:  # noqa: BLE001 - the caller still gets JSON, the log gets the trace
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error(500, "internal error")
    status = str(response.status)
    metrics.HTTP_REQUESTS.labels(route=route, method=method, status=status).inc()
    metrics.HTTP_SECONDS.labels(route=route, method=method, status=status).observe(
        time.perf_counter() - started)
    return response


@web.middleware
async def authenticate(request: web.Request, handler):
    """A bearer token with the route's role, unless the path is open or no tokens are
    configured. 401: no token or an unknown one; 403: a known token without the role."""
    tokens = request.app[TOKENS]
    if not tokens.enabled or request.path in request.app[OPEN_PATHS]:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    who = tokens.identify(token.strip()) if scheme.lower() == "bearer" else None
    if who is None:
        metrics.AUTH_FAILURES.labels(status="401").inc()
        response = error(401, "a valid bearer token is required",
                         {"Authorization": "missing" if not header else "unknown token"})
        response.headers["WWW-Authenticate"] = 'Bearer realm="driftline"'
        return response
    needed = role_of(request.match_info.handler)
    if not allows(who[1], needed):
        metrics.AUTH_FAILURES.labels(status="403").inc()
        return error(403, f"this needs the {needed} role",
                     {"Authorization": f"token {who[0]!r} has the {who[1]} role"})
    return await handler(request)
