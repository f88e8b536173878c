"""The API's middlewares: every request counted, timed and answered in the one error shape
(:mod:`serving.errors`); every route but the open ones behind a bearer token with its role;
and, before the token is looked at, no request taken from another site (:func:`cross_site`):

* A request that changes something (any method but GET, HEAD, OPTIONS) with an ``Origin``
  header naming another origin than the ``Host`` it was sent to is a 403 naming
  ``Origin``: a page of another site posting here. Requests without ``Origin`` (curl, other
  servers) pass; browsers send it with every such request.
* An admin route's request must be ``Content-Type: application/json`` (a 415 naming
  ``Content-Type``), unless it has neither a body nor a content type and the route reads no
  body (``curl -X POST .../rollback``): text/plain, forms and multipart are what another
  site's page may send without asking the browser's CORS preflight.
* Without tokens (the API then listens on loopback only, unless ``driftline serve
  --insecure``), a request whose ``Host`` is a public name is a 403 naming ``Host``: a page
  whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own. Loopback names, IP
  addresses and one-label names (``api:8080`` in compose) pass
  (:func:`serving.auth.rebindable_authority`).
"""

from __future__ import annotations

import functools
import logging
import time

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from driftline.errors import DriftlineError
from monitoring import metrics
from serving.auth import ROLES, allows, rebindable_authority
from serving.errors import error, error_response
from serving.keys import OPEN_PATHS, SETTINGS, TOKENS
from serving.routing import role_of

log = logging.getLogger(__name__)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON = "application/json"


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
    """No cross-site request (:func:`cross_site`), then a bearer token with the route's
    role, unless the path is open or no tokens are configured. 401: no token or an unknown
    one; 403: a known token without the role."""
    tokens = request.app[TOKENS]
    if (refused := cross_site(request, tokens.enabled)) is not None:
        return refused
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


def cross_site(request: web.Request, tokens: bool) -> web.Response | None:
    """The refusal of a request another site may have made (see the module's text), or
    None. Cheap on the scoring path: a header or two looked up."""
    headers = request.headers
    if not tokens:
        host = headers.get(hdrs.HOST, "")
        if rebindable_authority(host):
            return error(403, "this server has no tokens: it answers requests to loopback, "
                              "IP addresses and one-label names only (DNS rebinding)",
                         {"Host": f"{host!r} is a public name"})
    if request.method in SAFE_METHODS:
        return None
    origin = headers.get(hdrs.ORIGIN)
    if origin is not None and not same_origin(origin, headers.get(hdrs.HOST, "")):
        return error(403, "cross-origin requests may not change anything here",
                       {"Origin": f"{origin!r} is not this server's origin"})
    route = getattr(request.match_info.handler, "route", None)
    if route is None or route.role != ROLES[-1]:
        return None  # scores and searches; unmatched paths get their 404 or 405
    media = request.content_type if hdrs.CONTENT_TYPE in headers else None
    if media is None and route.body is None and not request.body_exists:
        return None  # nothing sent: curl -X POST .../rollback
    if media != JSON:
        return error(415, f"the body must be {JSON}",
                       {"Content-Type": f"{media or 'none'}, not {JSON}"})
    return None


@functools.lru_cache(maxsize=256)
def same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` (an ``Origin`` header) is the origin of a request sent to ``host``
    (its ``Host`` header). A ``Host`` without a port stands for the default port of the
    origin's scheme (a proxy in front may end TLS).

    >>> same_origin("http://localhost:8080", "localhost:8080")
    True
    >>> same_origin("https://api.example", "api.example"), same_origin("null", "api.example")
    (True, False)
    >>> same_origin("http://evil.example", "localhost:8080")
    False
    >>> same_origin("http://localhost:9999", "localhost:8080")
    False
    """
    try:
        url = URL(origin)
        if url.scheme not in ("http", "https") or not url.host or not host:
            return False
        sent_to = URL.build(scheme=url.scheme, authority=host)
    except (ValueError, TypeError):
        return False
    return (url.host.lower(), url.port) == ((sent_to.host or "").lower(), sent_to.port)
