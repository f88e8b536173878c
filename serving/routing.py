"""The route table's vocabulary: each handler is declared once, with its method, path, the
role it needs, what it is for, and its request and response bodies.

A handler module keeps its own :class:`RouteTable` (as aiohttp's ``web.RouteTableDef``) and
declares each handler with it::

    ROUTES = RouteTable()

    @ROUTES.post("/v1/models/{pipeline}/promote", role="admin", tag="models",
                 summary="Make a registry version the {pipeline} champion",
                 body=PromoteRequest, answers=[Answer(202, "The swap is requested.", Swap)],
                 errors={404: "No such registry version."})
    async def promote_model(request): ...

:mod:`serving.routes` joins the modules' tables into the application's one table; the app
mounts it (:func:`mount`) and :mod:`serving.openapi` describes it, without building an
app. A body is a pydantic model, or a function of the :class:`Context` giving one (the
event of a ``{pipeline}`` route is that pipeline's own). ``{pipeline}`` in a summary is
replaced by the pipeline's name.

>>> table = RouteTable()
>>> @table.get("/healthz", role="scorer", tag="service", summary="Liveness")
... async def healthz(request): ...
>>> [(r.method, r.path, r.role) for r in table], healthz.route.summary
([('GET', '/healthz', 'scorer')], 'Liveness')
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from driftline.adapters.config import Settings
from serving.auth import ROLES
from streams.declarations import PipelineSpec

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Context:
    """What a route's description depends on: the settings, and the pipeline of one
    concrete path of a ``{pipeline}`` route (None for the others)."""

    settings: Settings
    spec: PipelineSpec | None = None

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else ""


# A pydantic model, or a function of the Context giving one (None: no such body here).
ModelOf = type[BaseModel] | Callable[[Context], type[BaseModel] | None]


@dataclass(frozen=True)
class Answer:
    """A success response: its status, what it means, and its body: a pydantic ``model``
    for JSON, or a JSON ``schema`` with its ``media`` type for what no model describes
    (Prometheus text, an HTML page)."""

    status: int
    description: str
    model: ModelOf | None = None
    schema: Mapping[str, Any] | None = None
    media: str = "application/json"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    role: str                                # the least role that may call it
    tag: str
    summary: str
    description: str = ""
    body: ModelOf | None = None              # the JSON request body
    answers: tuple[Answer, ...] = ()
    errors: Mapping[int, str | None] = field(default_factory=dict)  # None: the generic text
    parameters: tuple[Mapping[str, Any], ...] = ()
    # For a {pipeline} route: the pipelines it is described for (the others answer 404).
    exists_for: Callable[[PipelineSpec], bool] = lambda spec: True

    @property
    def per_pipeline(self) -> bool:
        return "{pipeline}" in self.path


class RouteTable:
    """Routes declared by decorating their handlers (the handler gets a ``route``
    attribute, which the authentication middleware reads for the role)."""

    def __init__(self, routes: tuple[Route, ...] = ()) -> None:
        self._routes: list[Route] = list(routes)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def __add__(self, other: RouteTable) -> RouteTable:
        return RouteTable((*self, *other))

    def route(self, method: str, path: str, *, role: str, tag: str, summary: str,
              answers: list[Answer] | tuple[Answer, ...] = (), **details: Any,
              ) -> Callable[[Handler], Handler]:
        if role not in ROLES:
            raise ValueError(f"{method} {path}: role {role!r} is not one of {ROLES}")

        def declare(handler: Handler) -> Handler:
            route = Route(method, path, handler, role, tag, summary,
                          answers=tuple(answers), **details)
            handler.route = route  # type: ignore[attr-defined]
            self._routes.append(route)
            return handler
        return declare

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)


def role_of(handler: Any) -> str:
    """The role a handler needs: its route's, else ``admin`` (a route added without a
    declaration is closed, not open)."""
    route = getattr(handler, "route", None)
    return route.role if route is not None else ROLES[-1]


def mount(app: web.Application, table: RouteTable) -> None:
    for route in table:
        app.router.add_route(route.method, route.path, route.handler)
