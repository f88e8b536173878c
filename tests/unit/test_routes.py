"""The route table, the bodies and the error mapping of the API, without a server."""

from __future__ import annotations

import pytest
from aiohttp import web

from driftline.adapters.config import Settings
from driftline.errors import Conflict, Invalid, NotFound, TooLarge, Unavailable
from online_models.explain import Contribution
from serving.app import create_app
from serving.errors import Unreadable, status_of
from serving.handlers.scores import score_body
from serving.openapi import document
from serving.routes import ROUTES
from serving.routing import Context, role_of
from serving.schemas import score_model
from serving.scoring import Score
from streams.pipelines import PIPELINES


def test_each_route_is_declared_once_and_mounted_as_declared():
    declared = [(r.method, r.path) for r in ROUTES]
    assert len(declared) == len(set(declared))
    app = create_app(Settings(api_tokens="t:scorer:" + "0" * 64))
    mounted = [(r.method, r.resource.canonical, r.handler) for r in app.router.routes()
               if r.method != "HEAD"]
    assert [(m, p) for m, p, _ in mounted] == declared
    assert all(role_of(h) == r.role for (_, _, h), r in zip(mounted, ROUTES, strict=True))


def test_an_undeclared_handler_needs_the_admin_role():
    async def handler(request: web.Request) -> web.Response: ...
    assert role_of(handler) == "admin"


def test_the_description_has_every_route_of_every_pipeline_it_exists_for():
    doc = document(Settings())
    for route in ROUTES:
        specs = [s for s in PIPELINES.values() if route.exists_for(s)] \
            if route.per_pipeline else [None]
        for spec in specs:
            path = route.path.replace("{pipeline}", spec.name) if spec else route.path
            op = doc["paths"][path][route.method.lower()]
            assert op["x-driftline-route"] == route.path and op["tags"] == [route.tag]
    no_embeddings = [n for n, s in PIPELINES.items() if s.embeddings is None]
    assert no_embeddings and all(f"/v1/similar/{n}" not in doc["paths"] for n in no_embeddings)


@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("degraded", [False, True])
def test_a_score_body_is_what_its_model_describes(name, degraded):
    spec = PIPELINES[name]
    feature = spec.model_feature_names[0]
    score = Score("e1", "c1", 0.25, "v1.2", "fallback" if degraded else "champion",
                  {feature: 1.5}, (Contribution(feature, 1.5, 0.1),), None, degraded,
                  "features_unavailable" if degraded else None)
    body = score_body(spec, score)
    model = score_model(Context(Settings(), spec))
    assert model.model_validate(body).model_dump(exclude_unset=True) == body
    assert ("probability" in body) == (spec.task == "binary")
    assert ("degraded_reason" in body) == degraded
    with pytest.raises(ValueError):  # the model forbids what the body does not carry
        model.model_validate({**body, "unexpected": 1})


def test_each_kind_of_error_has_its_status():
    assert [status_of(e) for e in (
        Unreadable("$", "broken"), NotFound("x"), Conflict("x"), TooLarge({"events": "x"}),
        Invalid({"a": "b"}), Unavailable("x"))] == [400, 404, 409, 413, 422, 503]
