"""The dashboard's handlers on an application of their own (no Redis, no worker): the static
page and the files it loads, their headers (a policy without inline script or style), the
allow-list of files, revalidation by ETag, and the data route's answers. The page in a real
browser is tests/integration/test_dashboard.py."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from serving import dashboard
from serving.dashboard import handlers
from serving.middleware import observe_and_shape_errors
from serving.routing import mount

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "serving" / "dashboard"


class FakeSampler:
    def __init__(self) -> None:
        self.asked: list[float | None] = []

    def data(self, since: float | None) -> dict:
        self.asked.append(since)
        return {"now": 12.0, "pipelines": {}}


@pytest.fixture
async def client():
    # With the API's error middleware: it answers the handlers' errors in the one shape.
    app = web.Application(middlewares=[observe_and_shape_errors])
    app[dashboard.SAMPLER] = FakeSampler()
    mount(app, dashboard.ROUTES)
    async with TestClient(TestServer(app)) as c:
        yield c


def assert_page_headers(resp) -> None:
    csp = resp.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                      "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'"):
        assert directive in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_page_is_static_html_without_inline_script_or_style(client):
    resp = await client.get("/dashboard")
    assert resp.status == 200
    assert resp.content_type == "text/html" and resp.charset == "utf-8"
    assert resp.headers["Cache-Control"] == "no-store"
    assert_page_headers(resp)
    html = await resp.text()
    assert html == (PACKAGE / "static" / "index.html").read_text()
    assert "<title>Driftline" in html
    # The policy would block these: the page must not need them.
    assert "<style" not in html and " style=" not in html
    assert all(not body.strip() for body in re.findall(r"<script[^>]*>(.*?)</script>", html,
                                                       re.S))
    # The figures the browser test reads, and what the script fills in.
    for element_id in ("api-rate", "api-p50", "api-p99", "updated", "worker-status",
                       "redis-status", "pipelines", "error", "footer"):
        assert f'id="{element_id}"' in html


async def test_every_file_the_page_loads_is_served_with_its_type(client):
    html = await (await client.get("/dashboard")).text()
    loaded = re.findall(r'(?:src|href)="dashboard/static/([^"]+)"', html)
    assert sorted(loaded) == sorted(dashboard.ASSETS)  # all of them, nothing else
    for name in loaded:
        resp = await client.get(f"/dashboard/static/{name}")
        assert resp.status == 200, name
        expected = "text/javascript" if name.endswith(".js") else "text/css"
        assert resp.content_type == expected and resp.charset == "utf-8"
        assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["ETag"]
        assert_page_headers(resp)
        relative = dashboard.ASSETS[name][0]
        assert await resp.read() == (PACKAGE / "static" / relative).read_bytes()
    script = (PACKAGE / "static" / "dashboard.js").read_text()
    assert "new uPlot(" in script and "getContext" not in script  # uPlot draws, not us
    assert "events/s" in script and "labels learned/s" in script


@pytest.mark.parametrize("path", [
    "/dashboard/static/index.html",                   # the page has its own route
    "/dashboard/static/LICENSE-uPlot",
    "/dashboard/static/vendor%2FuPlot.min.css",       # names, not paths
    "/dashboard/static/..%2Fhandlers.py",
    "/dashboard/static/..%2F..%2F..%2Fpyproject.toml",
    "/dashboard/static/dashboard.JS",
])
async def test_only_the_listed_files_are_served(client, path):
    resp = await client.get(path)
    assert resp.status == 404
    body = await resp.json()
    assert body["error"] == "no such dashboard file" and "dashboard.js" in body["fields"]["name"]


async def test_dot_segments_never_reach_a_file(client):
    for path in ("/dashboard/static/%2E%2E", "/dashboard/static/../handlers.py",
                 "/dashboard/static/%2E%2E/%2E%2E/pyproject.toml"):
        resp = await client.get(path)
        assert resp.status == 404, path
        assert b"import" not in await resp.read()


async def test_a_file_is_revalidated_by_its_etag(client):
    first = await client.get("/dashboard/static/uPlot.iife.min.js")
    etag = first.headers["ETag"]
    again = await client.get("/dashboard/static/uPlot.iife.min.js",
                             headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag
    assert_page_headers(again)
    for other in ('"0123"', '"0123", W/"4567"'):
        changed = await client.get("/dashboard/static/uPlot.iife.min.js",
                                   headers={"If-None-Match": other})
        assert changed.status == 200 and len(await changed.read()) > 10_000
    star = await client.get("/dashboard/static/dashboard.css", headers={"If-None-Match": "*"})
    assert star.status == 304


async def test_the_data_route_passes_since_and_refuses_what_is_not_a_number(client):
    sampler = client.app[dashboard.SAMPLER]
    resp = await client.get("/dashboard/data")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert await resp.json() == {"now": 12.0, "pipelines": {}}
    assert (await client.get("/dashboard/data?since=10.5")).status == 200
    assert sampler.asked == [None, 10.5]
    for bad in ("abc", "nan", "inf"):
        resp = await client.get(f"/dashboard/data?since={bad}")
        assert resp.status == 422
        assert (await resp.json())["fields"] == {"since": "a number: the time of a sample"}
    assert sampler.asked == [None, 10.5]


def test_the_routes_and_their_open_paths():
    assert [(r.method, r.path, r.role) for r in dashboard.ROUTES] == [
        ("GET", "/dashboard", "scorer"), ("GET", "/dashboard/static/{name}", "scorer"),
        ("GET", "/dashboard/data", "scorer")]
    assert dashboard.STATIC_PATHS == {f"/dashboard/static/{n}" for n in dashboard.ASSETS}
    assert "/dashboard/static/{name}" in dashboard.view.OWN_ROUTES  # not counted as traffic
    # The page's files are open exactly when the page is (it is useless without them).
    configured = frozenset({"/healthz", "/dashboard", "/dashboard/data"})
    assert dashboard.open_paths(configured) >= configured | dashboard.STATIC_PATHS
    closed = frozenset({"/healthz", "/dashboard/data"})
    assert dashboard.open_paths(closed) == closed


def test_no_dashboard_module_is_longer_than_500_lines():
    for module in PACKAGE.glob("*.py"):
        lines = len(module.read_text().splitlines())
        assert lines <= 500, f"{module.name}: {lines} lines"


def test_every_static_file_ships_with_the_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["serving.dashboard"]
    files = {p for p in (PACKAGE / "static").rglob("*") if p.is_file()}
    shipped = {p for pattern in patterns for p in PACKAGE.glob(pattern)}  # as setuptools
    assert files == shipped, files ^ shipped
    names = {p.relative_to(PACKAGE / "static").as_posix() for p in files}
    assert {relative for relative, _ in dashboard.ASSETS.values()} | {handlers.PAGE_FILE} <= names


def test_the_vendored_uplot_is_the_version_the_script_pins():
    script = (ROOT / "scripts" / "vendor-uplot.sh").read_text()
    version = re.search(r'UPLOT_VERSION="\$\{UPLOT_VERSION:-([0-9.]+)\}"', script).group(1)
    vendor = PACKAGE / "static" / "vendor"
    assert f"(v{version})" in (vendor / "uPlot.iife.min.js").read_text()[:200]
    assert "MIT License" in (vendor / "LICENSE-uPlot").read_text()
