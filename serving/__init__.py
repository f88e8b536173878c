"""The scoring API: an aiohttp application (:mod:`serving.app`) and its handlers, route
table, OpenAPI description and dashboard."""

import driftline  # checks that the top-level packages are Driftline's own  # noqa: F401
