"""Errors to HTTP, in one place: the one error shape of the API and the status of each of
Driftline's exceptions (:mod:`driftline.errors`).

Every error body is ``{"error": <message>, "fields": {<field>: <reason>}}``. A handler
raises the exception that says what went wrong; the middleware
(:mod:`serving.middleware`) answers with :func:`error_response`.

>>> from driftline.errors import Conflict, NotFound
>>> status_of(NotFound("no registry version 3", field="version")), status_of(Conflict("x"))
(404, 409)
>>> status_of(Unreadable("$", "broken gzip data")), status_of(TooLarge({"events": "at most 5"}))
(400, 413)
"""

from __future__ import annotations

from aiohttp import web

from driftline.errors import Conflict, DriftlineError, Invalid, NotFound, TooLarge, Unavailable


class Unreadable(Invalid):
    """The request body could not be read at all (a broken compressed body, an unknown
    ``Content-Encoding``): a 400, where a readable but invalid body is a 422."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__({field: reason}, "unreadable request body")


# Most specific first: the first class an exception is an instance of gives its status.
STATUSES: tuple[tuple[type[DriftlineError], int], ...] = (
    (Unreadable, 400),
    (NotFound, 404),
    (Conflict, 409),
    (TooLarge, 413),
    (Invalid, 422),
    (Unavailable, 503),
)


def status_of(exc: DriftlineError) -> int:
    return next((status for kind, status in STATUSES if isinstance(exc, kind)), 500)


def error(status: int, message: str, fields: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "fields": fields or {}}, status=status)


def error_response(exc: DriftlineError) -> web.Response:
    return error(status_of(exc), exc.message, exc.fields)
