"""The one error shape of the API: ``{"error": <message>, "fields": {<field>: <reason>}}``."""

from __future__ import annotations

from aiohttp import web


def error(status: int, message: str, fields: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "fields": fields or {}}, status=status)
