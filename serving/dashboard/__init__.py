"""The live dashboard: ``GET /dashboard`` (a static page), ``GET /dashboard/static/{name}``
(its script, styles and the uPlot chart library) and ``GET /dashboard/data`` (the JSON it
polls).

Four jobs, four places, so that each can change and be tested alone:

* :mod:`~serving.dashboard.view`: the logic, without I/O (rates, latency percentiles,
  drift and promotion markers, the history kept, the JSON of the data route);
* :mod:`~serving.dashboard.sampler`: the :class:`Sampler` every API process runs, reading
  the worker's metrics, the API's own and the learners in Redis;
* :mod:`~serving.dashboard.handlers`: the routes (:data:`ROUTES`), their handlers and the
  page's headers;
* ``static/``: the page (HTML, CSS, JavaScript) and uPlot under ``static/vendor/``.
"""

from serving.dashboard.handlers import (
    ASSETS,
    PAGE_HEADERS,
    ROUTES,
    SAMPLER,
    STATIC_PATHS,
    STATIC_ROUTE,
    dashboard_data,
    dashboard_page,
    dashboard_static,
    open_paths,
)
from serving.dashboard.sampler import Sampler
from serving.dashboard.view import (
    API_SERIES,
    PIPELINE_SERIES,
    Dashboard,
    Ring,
    bucket_increase,
    columns,
    finite,
    histogram_buckets,
    increase,
    rate,
)

__all__ = [
    "API_SERIES", "ASSETS", "PAGE_HEADERS", "PIPELINE_SERIES", "ROUTES", "SAMPLER",
    "STATIC_PATHS", "STATIC_ROUTE", "Dashboard", "Ring", "Sampler", "bucket_increase",
    "columns", "dashboard_data", "dashboard_page", "dashboard_static", "finite",
    "histogram_buckets", "increase", "open_paths", "rate",
]
