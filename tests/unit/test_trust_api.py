"""What the API trusts (issue 15): it does not listen beyond loopback without tokens unless
told ``--insecure``; no other site's page may change anything through a browser (a foreign
``Origin``, a body an admin route does not read as JSON); and a server without tokens
refuses a ``Host`` a page re-pointed at it may send (DNS rebinding). The app is the real one, its
middlewares and routes, without its stores: a refused request never reaches a handler."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from driftline.adapters.config import Settings
from driftline.cli import build_parser
from online_models import lifecycle
from serving.app import create_app
from serving.auth import new_token
from serving.keys import REGISTRY
from serving.server import check_exposure

ROLLBACK = "/v1/models/fraud/rollback"
ADMIN_TOKEN, ADMIN_ENTRY = new_token("ops", "admin")


class Recorder:
    """lifecycle.rollback's stand-in: what reached it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, settings, registry, pipeline):
        self.calls.append(pipeline)
        return SimpleNamespace(to_dict=lambda: {"version": 1})


@pytest.fixture
def rollbacks(monkeypatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(lifecycle, "rollback", recorder)
    return recorder


async def client_of(settings: Settings) -> TestClient:
    app = create_app(settings)
    app.cleanup_ctx.clear()  # no Redis, no scorers: the routes here need none
    app[REGISTRY] = object()  # never opened: lifecycle.rollback is the recorder
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def open_api():
    """No tokens, on loopback: the default."""
    client = await client_of(Settings(api_tokens=""))
    yield client
    await client.close()


@pytest.fixture
async def guarded_api():
    client = await client_of(Settings(api_tokens=ADMIN_ENTRY))
    yield client
    await client.close()


def own_origin(client: TestClient) -> str:
    return f"http://127.0.0.1:{client.port}"


async def assert_refused(resp, status: int, field: str) -> None:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error", "fields"} and field in body["fields"], body


async def test_a_cross_origin_text_plain_post_to_an_admin_route_is_refused(
        open_api, rollbacks):
    # What any web page can send to 127.0.0.1 without a CORS preflight.
    resp = await open_api.post(ROLLBACK, data=b"{}", headers={
        "Origin": "https://evil.example", "Content-Type": "text/plain"})
    await assert_refused(resp, 403, "Origin")
    assert rollbacks.calls == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
async def test_an_admin_body_that_is_not_json_is_a_415(open_api, rollbacks, content_type):
    # Same origin (or none: a browser that strips it): the media type refuses it still.
    for headers in ({}, {"Origin": own_origin(open_api)}):
        resp = await open_api.post(ROLLBACK, data=b"{}",
                                   headers={**headers, "Content-Type": content_type})
        await assert_refused(resp, 415, "Content-Type")
    resp = await open_api.post("/v1/models/fraud/promote", data=b'{"version": 1}',
                               headers={"Content-Type": content_type})
    await assert_refused(resp, 415, "Content-Type")
    resp = await open_api.post(ROLLBACK, data=b"{}", skip_auto_headers=["Content-Type"])
    await assert_refused(resp, 415, "Content-Type")  # a body of no declared type
    assert rollbacks.calls == []


async def test_same_origin_json_and_plain_clients_pass(open_api, rollbacks):
    for headers in ({"Origin": own_origin(open_api), "Content-Type": "application/json"},
                    {"Content-Type": "application/json; charset=utf-8"},
                    {"Origin": f"http://localhost:{open_api.port}",
                     "Host": f"localhost:{open_api.port}", "Content-Type": "application/json"}):
        resp = await open_api.post(ROLLBACK, headers=headers)
        assert resp.status == 202, (headers, await resp.text())
    # curl -X POST .../rollback: no body, no content type.
    resp = await open_api.post(ROLLBACK, skip_auto_headers=["Content-Type"])
    assert resp.status == 202, await resp.text()
    assert rollbacks.calls == ["fraud"] * 4


@pytest.mark.parametrize("origin", ["null", "http://127.0.0.1:1", "https://127.0.0.1",
                                    "http://localhost.evil.example"])
async def test_every_foreign_origin_is_refused_on_every_changing_method(open_api, origin):
    for method, path in (("POST", "/v1/score/fraud"), ("PUT", "/v1/models/fraud/traffic"),
                         ("DELETE", "/v1/models/fraud/traffic"),
                         ("DELETE", "/v1/entities/fraud/card-1")):
        resp = await open_api.request(method, path, json={}, headers={"Origin": origin})
        await assert_refused(resp, 403, "Origin")


async def test_reading_with_a_foreign_origin_is_not_refused(open_api):
    resp = await open_api.get("/openapi.json", headers={"Origin": "https://evil.example"})
    assert resp.status == 200


async def test_without_tokens_a_public_host_is_refused(open_api, rollbacks):
    # DNS rebinding: the attacker's name now points at 127.0.0.1, and is same-origin.
    attacker = f"rebound.evil.example:{open_api.port}"
    resp = await open_api.post(ROLLBACK, json={}, headers={
        "Host": attacker, "Origin": f"http://{attacker}"})
    await assert_refused(resp, 403, "Host")
    resp = await open_api.get("/openapi.json", headers={"Host": attacker})
    await assert_refused(resp, 403, "Host")
    assert rollbacks.calls == []


@pytest.mark.parametrize("host", ["api:8080", "10.0.0.5:8080", "[::1]:8080", "app.localhost"])
async def test_without_tokens_hosts_no_page_can_rebind_are_answered(open_api, host):
    resp = await open_api.get("/openapi.json", headers={"Host": host})
    assert resp.status == 200, await resp.text()


async def test_with_tokens_the_host_is_not_checked_and_the_origin_is(guarded_api, rollbacks):
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    resp = await guarded_api.get("/openapi.json", headers={"Host": "api.example"})
    assert resp.status == 200
    resp = await guarded_api.post(ROLLBACK, data=b"{}", headers={
        **auth, "Origin": "https://evil.example", "Content-Type": "text/plain"})
    await assert_refused(resp, 403, "Origin")
    resp = await guarded_api.post(ROLLBACK, data=b"{}", headers={
        **auth, "Content-Type": "text/plain"})
    await assert_refused(resp, 415, "Content-Type")
    resp = await guarded_api.post(ROLLBACK, json={}, headers=auth)
    assert resp.status == 202
    assert rollbacks.calls == ["fraud"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "api.example"])
def test_serve_refuses_beyond_loopback_without_tokens(host):
    with pytest.raises(ValueError, match="DRIFTLINE_API_TOKENS.*--insecure"):
        check_exposure(Settings(api_tokens=""), host)
    check_exposure(Settings(api_tokens=""), host, insecure=True)
    check_exposure(Settings(api_tokens=ADMIN_ENTRY), host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_serve_listens_on_loopback_without_tokens(host):
    check_exposure(Settings(api_tokens=""), host)


def test_serve_takes_insecure_and_refuses_0_0_0_0_with_exit_status_2(monkeypatch, capsys):
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--insecure"])
    assert args.insecure is True
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0"])
    assert args.insecure is False
    # Refused before anything is bound or served.
    monkeypatch.setattr("serving.server.serve_one", lambda *a, **k: pytest.fail("served"))
    assert args.func(args, Settings(api_tokens="")) == 2
    assert "refusing to serve on 0.0.0.0 without tokens" in capsys.readouterr().err


def test_the_worker_binds_its_host_and_serves_none_of_fausts_pages():
    import faust

    from agents.app import WEB_PAGES_OFF

    app = faust.App("trust-test", web_bind="127.0.0.1", **WEB_PAGES_OFF)
    # Faust's default bind is every interface; only its plain "/" index is left.
    assert faust.App("trust-default").conf.web_bind == "0.0.0.0"
    assert [bp for _, bp in app.web.blueprints._enabled] == [
        "faust.web.apps.production_index:blueprint"]
