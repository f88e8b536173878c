"""The live dashboard: ``GET /dashboard`` (a self-contained page) and ``GET /dashboard/data``
(the JSON it polls).

Every API process runs a :class:`Sampler` (started by the application's cleanup context)
that every :data:`SAMPLE_SECONDS` reads

* the stream worker's ``/metrics`` (``DRIFTLINE_WORKER_HOST:DRIFTLINE_WORKER_PORT``):
  events consumed and labels learned per pipeline, drift detections and promotions; a
  worker that does not answer leaves a gap, and the page says it is down;
* the API's own metrics, as ``/metrics`` exposes them (:func:`monitoring.metrics.exposition`:
  under ``driftline serve --workers N``, the sum over the pool, so whichever process
  answers reports the whole API): requests per second (the dashboard's own left out),
  scores per second per pipeline, and the p50 and p99 latency of the scoring routes over
  the last :data:`LATENCY_SAMPLES` samples, from the deltas of the latency histogram's
  buckets (interpolated inside a bucket, as Prometheus' ``histogram_quantile``);
* each pipeline's learner hash in Redis: the model revision, the labels learned, and the
  rolling prequential metric of the current revision (the pipeline's first metric).

and keeps the last :data:`KEEP_SECONDS` of samples per pipeline, with markers: a drift
detection where the worker's ``driftline_drift_detections_total`` went up, a promotion
where the learner's revision changed (a rollback included). The model version shown is the
one this process serves, as ``/healthz`` reports it.

The history lives in the process's memory: a new process starts an empty chart, and
under a pool each process keeps its own (the numbers agree; the page keeps to the
process its connection reaches). The logic (:class:`Ring`, :func:`increase`,
:func:`bucket_increase`, :class:`Dashboard`) does no I/O; :class:`Sampler` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from driftline.adapters.config import Settings
from driftline.adapters.stores import RedisKeys
from monitoring import metrics as m
from monitoring.quantiles import histogram_quantile
from monitoring.scrape import Scrape, parse
from online_models.evaluation import bigger_is_better
from serving.errors import error

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 2.0           # between two samples
# Nobody has polled the page for WATCHED_SECONDS: sample every IDLE_SECONDS, and only the
# learners' state in Redis (the prequential history and promotions go on; throughput,
# latency and drift markers resume, averaged over the gap, when someone looks again).
IDLE_SECONDS = 10.0
WATCHED_SECONDS = 60.0
KEEP_SECONDS = 30 * 60         # history kept per pipeline
LATENCY_SAMPLES = 5            # latency percentiles over this many sample intervals (10 s)
WORKER_TIMEOUT_SECONDS = 1.5   # a slower worker /metrics counts as down for that sample
MAX_MARKERS = 500              # per pipeline, besides the time bound
OWN_ROUTES = frozenset({"/dashboard", "/dashboard/data"})  # not counted as API traffic
SCORE_ROUTE_PREFIX = "/v1/score/"                        # whose latency is shown


# ---- pure logic --------------------------------------------------------------------------

def increase(before: float | None, after: float | None) -> float | None:
    """How much a counter went up between two readings; a counter that went down was reset
    (its process restarted) and counts from zero. None when either reading is missing.

    >>> increase(10.0, 15.0), increase(10.0, 3.0), increase(None, 7.0)
    (5.0, 3.0, None)
    """
    if before is None or after is None:
        return None
    return after - before if after >= before else after


def rate(before: float | None, after: float | None, seconds: float) -> float | None:
    """Per-second :func:`increase` over ``seconds``.

    >>> rate(100.0, 150.0, 2.0), rate(100.0, 150.0, 0.0)
    (25.0, None)
    """
    gained = increase(before, after)
    return gained / seconds if gained is not None and seconds > 0 else None


Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending, +Inf last


def histogram_buckets(s: Scrape, name: str, keep: Callable[[dict], bool]) -> Buckets:
    """The cumulative buckets of histogram ``name``, summed over the series ``keep``
    accepts.

    >>> s = parse('# TYPE h histogram\\n'
    ...     'h_bucket{r="a",le="0.1"} 1\\nh_bucket{r="a",le="+Inf"} 2\\nh_count{r="a"} 2\\n'
    ...     'h_bucket{r="b",le="0.1"} 4\\nh_bucket{r="b",le="+Inf"} 4\\nh_count{r="b"} 4\\n')
    >>> histogram_buckets(s, "h", lambda labels: True)
    [(0.1, 5.0), (inf, 6.0)]
    """
    sums: dict[float, float] = {}
    for labels, value in s.get(name + "_bucket", []):
        if keep(labels):
            le = float(labels["le"])
            sums[le] = sums.get(le, 0.0) + value
    return sorted(sums.items())


def bucket_increase(before: Buckets, after: Buckets) -> Buckets:
    """The observations between two readings of a histogram, bucket by bucket (cumulative);
    after a reset (any bucket went down), everything the new reading holds.

    >>> bucket_increase([(0.1, 5.0), (math.inf, 6.0)], [(0.1, 7.0), (math.inf, 9.0)])
    [(0.1, 2.0), (inf, 3.0)]
    >>> bucket_increase([(0.1, 5.0), (math.inf, 6.0)], [(0.1, 1.0), (math.inf, 1.0)])
    [(0.1, 1.0), (inf, 1.0)]
    """
    old = dict(before)
    if any(count < old.get(le, 0.0) for le, count in after):
        return list(after)
    return [(le, count - old.get(le, 0.0)) for le, count in after]


def finite(value: Any) -> float | None:
    """A number fit for JSON (``NaN`` and infinities are not), rounded for the wire.

    >>> finite(0.123456789), finite(float("nan")), finite(None), finite("2")
    (0.123457, None, None, 2.0)
    """
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, 6) if math.isfinite(value) else None


class Ring:
    """Samples (dicts with a time ``t``, appended in time order) of the last
    ``keep_seconds``, and at most ``maxlen`` of them.

    >>> r = Ring(keep_seconds=10)
    >>> for t in range(0, 30, 5):
    ...     r.append({"t": float(t), "x": t})
    >>> [s["t"] for s in r.since(None)]
    [15.0, 20.0, 25.0]
    >>> [s["x"] for s in r.since(20.0)], r.latest()["x"], len(r)
    ([25], 25, 3)
    """

    def __init__(self, keep_seconds: float, maxlen: int | None = None) -> None:
        self.keep = keep_seconds
        self.items: deque[dict] = deque(maxlen=maxlen)

    def append(self, item: dict) -> None:
        self.items.append(item)
        while self.items and self.items[0]["t"] < item["t"] - self.keep:
            self.items.popleft()

    def since(self, t: float | None) -> list[dict]:
        """The samples after ``t`` (all with None), oldest first."""
        if t is None:
            return list(self.items)
        newer: list[dict] = []
        for item in reversed(self.items):
            if item["t"] <= t:
                break
            newer.append(item)
        return newer[::-1]

    def latest(self) -> dict | None:
        return self.items[-1] if self.items else None

    def __len__(self) -> int:
        return len(self.items)


def columns(samples: list[dict], names: tuple[str, ...]) -> dict[str, list]:
    """Samples as one list per field (smaller on the wire than one object per sample).

    >>> columns([{"t": 1.0, "x": 2.0}, {"t": 3.0, "x": None}], ("t", "x"))
    {'t': [1.0, 3.0], 'x': [2.0, None]}
    """
    return {name: [s.get(name) for s in samples] for name in names}


@dataclass
class _Pipeline:
    task: str
    metric: str
    samples: Ring
    markers: Ring
    worker: dict[str, float] = field(default_factory=dict)  # the last counters read
    worker_t: float | None = None
    scores: float | None = None
    revision: int | None = None
    learner: dict[str, Any] = field(default_factory=dict)


PIPELINE_SERIES = ("t", "events", "labels", "scores", "metric")
API_SERIES = ("t", "requests", "p50", "p99")


class Dashboard:
    """The dashboard's state, fed one reading of everything at a time (no I/O).

    ``pipelines`` maps a name to (task, headline metric). :meth:`observe` takes the time,
    the worker's metrics (None: it did not answer), the API's metrics and each pipeline's
    learner hash (None: Redis did not answer; a pipeline missing: it has none yet).

    >>> d = Dashboard({"fraud": ("binary", "roc_auc")})
    >>> def worker(events, learned, drifts):
    ...     return parse(
    ...         f'driftline_events_total{{pipeline="fraud",kind="event",outcome="ok"}} {events}\\n'
    ...         f'driftline_labels_learned_total{{pipeline="fraud"}} {learned}\\n'
    ...         f'driftline_drift_detections_total{{pipeline="fraud",kind="concept"}} {drifts}\\n')
    >>> def learner(revision, auc):
    ...     return {"fraud": {"version": f"v{revision}.9", "revision": str(revision),
    ...             "updates": "9", "metrics": json.dumps({f"v{revision}": {"roc_auc": auc}})}}
    >>> d.observe(100.0, worker(0, 0, 0), Scrape(), learner(0, 0.5))
    >>> d.observe(102.0, worker(300, 100, 0), Scrape(), learner(0, 0.75))
    >>> d.observe(104.0, None, Scrape(), learner(0, 0.8))   # the worker is down
    >>> d.observe(106.0, worker(700, 300, 1), Scrape(), learner(1, 0.9))
    >>> p = d.data(None, {"fraud": "v1.9"})["pipelines"]["fraud"]
    >>> p["series"]["events"], p["series"]["labels"], p["series"]["metric"]
    ([None, 150.0, None, 100.0], [None, 50.0, None, 50.0], [0.5, 0.75, 0.8, 0.9])
    >>> [(mk["t"], mk["kind"], mk["label"]) for mk in p["markers"]]
    [(106.0, 'drift', 'concept drift'), (106.0, 'promotion', 'v0 → v1')]
    >>> p["current"]["version"], p["current"]["events"], p["totals"]["drift"]
    ('v1.9', 100.0, 1.0)
    >>> d.data(104.0, {})["pipelines"]["fraud"]["series"]["t"]
    [106.0]
    """

    def __init__(self, pipelines: Mapping[str, tuple[str, str]],
                 keep_seconds: float = KEEP_SECONDS, latency_samples: int = LATENCY_SAMPLES,
                 sample_seconds: float = SAMPLE_SECONDS) -> None:
        maxlen = int(keep_seconds / sample_seconds * 1.5) + 10
        self.keep = keep_seconds
        self.sample_seconds = sample_seconds
        self.pipelines = {
            name: _Pipeline(task, metric, Ring(keep_seconds, maxlen),
                            Ring(keep_seconds, MAX_MARKERS))
            for name, (task, metric) in pipelines.items()}
        self.api = Ring(keep_seconds, maxlen)
        self._api_t: float | None = None
        self._requests: float | None = None
        self._latency: deque[Buckets] = deque(maxlen=latency_samples + 1)
        self.worker_up: bool | None = None
        self.worker_error: str | None = None
        self.redis_up: bool | None = None
        self.redis_error: str | None = None
        self.sampled_at: float | None = None

    # ---- one reading -----------------------------------------------------------------

    def observe(self, t: float, worker: Scrape | None, api: Scrape | None,
                learners: Mapping[str, Mapping[str, Any]] | None,
                metrics_read: bool = True) -> None:
        """One sample; ``metrics_read=False``: the learners alone were read (an idle
        sample), so a missing worker or API reading says nothing about them."""
        self.sampled_at = t
        if metrics_read:
            self.worker_up = worker is not None
        self.redis_up = learners is not None
        if api is not None:
            self._observe_api(t, api)
        for name, p in self.pipelines.items():
            sample: dict[str, Any] = {"t": t, "events": None, "labels": None, "scores": None,
                                      "metric": None}
            if worker is not None:
                self._observe_worker(t, name, p, worker, sample)
            if api is not None:
                scores = sum(v for labels, v in api.get("driftline_api_scores_total", [])
                             if labels.get("pipeline") == name
                             and labels.get("variant") != "shadow")
                if self._api_t is not None and p.scores is not None:
                    sample["scores"] = finite(rate(p.scores, scores, t - self._api_t))
                p.scores = scores
            if learners is not None:
                self._observe_learner(t, p, learners.get(name), sample)
            p.samples.append(sample)
        if api is not None:
            self._api_t = t

    def _observe_api(self, t: float, api: Scrape) -> None:
        requests = sum(v for labels, v in api.get("driftline_http_requests_total", [])
                       if labels.get("route") not in OWN_ROUTES)
        self._latency.append(histogram_buckets(
            api, "driftline_http_request_seconds",
            lambda labels: labels.get("route", "").startswith(SCORE_ROUTE_PREFIX)))
        sample: dict[str, Any] = {"t": t, "requests": None, "p50": None, "p99": None}
        if self._api_t is not None:
            sample["requests"] = finite(rate(self._requests, requests, t - self._api_t))
        if len(self._latency) > 1:
            window = bucket_increase(self._latency[0], self._latency[-1])
            for q, key in ((0.5, "p50"), (0.99, "p99")):
                seconds = histogram_quantile(q, window) if window else math.nan
                sample[key] = finite(seconds * 1000)  # NaN without observations: None
        self._requests = requests
        self.api.append(sample)

    def _observe_worker(self, t: float, name: str, p: _Pipeline, worker: Scrape,
                        sample: dict) -> None:
        now = {"events": worker.value("driftline_events_total", pipeline=name, kind="event"),
               "labels": worker.value("driftline_labels_learned_total", pipeline=name),
               "promotions": worker.value("driftline_model_promotions_total", pipeline=name)}
        drifts = {labels.get("kind", "?"): v
                  for labels, v in worker.get("driftline_drift_detections_total", [])
                  if labels.get("pipeline") == name}
        now.update({f"drift:{kind}": v for kind, v in drifts.items()})
        if p.worker_t is not None:
            for key in ("events", "labels"):
                sample[key] = finite(rate(p.worker.get(key), now[key], t - p.worker_t))
            for kind, value in sorted(drifts.items()):
                gained = increase(p.worker.get(f"drift:{kind}", 0.0), value) or 0
                if gained:
                    times = f"{gained:.0f}× " if gained > 1 else ""
                    p.markers.append({"t": t, "kind": "drift", "label": f"{times}{kind} drift"})
        p.worker, p.worker_t = now, t

    def _observe_learner(self, t: float, p: _Pipeline, raw: Mapping[str, Any] | None,
                         sample: dict) -> None:
        if not raw:
            return
        try:
            revision = int(raw.get("revision") or 0)
            by_version = json.loads(raw.get("metrics") or "{}")
        except (TypeError, ValueError):
            return
        current = by_version.get(f"v{revision}", {}) if isinstance(by_version, dict) else {}
        sample["metric"] = finite(current.get(p.metric))
        if p.revision is not None and revision != p.revision:
            p.markers.append({"t": t, "kind": "promotion",
                              "label": f"v{p.revision} → v{revision}"})
        p.revision = revision
        p.learner = {"version": raw.get("version"), "revision": revision,
                     "updates": finite(raw.get("updates")),
                     "metric_labels": finite(current.get("labels")),
                     "published_at": finite(raw.get("published_at"))}

    # ---- what the page polls -----------------------------------------------------------

    def data(self, since: float | None, serving: Mapping[str, str | None]) -> dict[str, Any]:
        """Samples and markers after ``since`` (all kept with None), the current figures,
        and ``serving``: the model version this process serves, per pipeline."""
        api_samples = self.api.since(since)
        latest_api = self.api.latest() or {}
        pipelines = {}
        for name, p in self.pipelines.items():
            latest = p.samples.latest() or {}
            pipelines[name] = {
                "task": p.task,
                "metric": p.metric,
                "lower_is_better": not bigger_is_better(p.metric),
                "current": {
                    "version": serving.get(name),
                    "revision": p.learner.get("revision"),
                    "learned": p.learner.get("updates"),
                    "metric_labels": p.learner.get("metric_labels"),
                    **{k: latest.get(k) for k in PIPELINE_SERIES if k != "t"},
                },
                "totals": {
                    "drift": finite(sum(v for k, v in p.worker.items()
                                        if k.startswith("drift:")))
                    if p.worker_t is not None else None,
                    "promotions": finite(p.worker.get("promotions"))
                    if p.worker_t is not None else None,
                },
                "series": columns(p.samples.since(since), PIPELINE_SERIES),
                "markers": p.markers.since(since),
            }
        return {
            "now": self.sampled_at,
            "interval": self.sample_seconds,
            "window": self.keep,
            "worker": {"up": self.worker_up, "error": self.worker_error},
            "redis": {"up": self.redis_up, "error": self.redis_error},
            "api": {"current": {k: latest_api.get(k) for k in API_SERIES if k != "t"},
                    "series": columns(api_samples, API_SERIES)},
            "pipelines": pipelines,
        }


# ---- I/O: the sampler of one API process --------------------------------------------------

class Sampler:
    """Feeds a :class:`Dashboard` every ``interval`` seconds in the background, from the
    worker's /metrics, this API's metrics and the learner hashes in Redis."""

    LEARNER_FIELDS = ("version", "revision", "updates", "metrics", "published_at")

    def __init__(self, settings: Settings, redis: Any, scorers: Mapping[str, Any],
                 interval: float = SAMPLE_SECONDS) -> None:
        self.redis = redis
        self.scorers = scorers
        self.interval = interval
        self.worker_url = settings.worker_metrics_url
        self.keys = {name: RedisKeys(settings.redis_prefix, name) for name in scorers}
        self.dashboard = Dashboard(
            {name: (s.spec.task, s.spec.metrics[0]) for name, s in scorers.items()},
            sample_seconds=interval)
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._watched_at = -WATCHED_SECONDS  # monotonic time of the last poll
        self._wake = asyncio.Event()

    def start(self) -> Sampler:
        self._task = asyncio.create_task(self._run(), name="dashboard-sampler")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def data(self, since: float | None) -> dict[str, Any]:
        if not self._watched():
            self._wake.set()  # someone looks again: sample now, and often
        self._watched_at = time.monotonic()
        serving = {name: s.serving_version for name, s in self.scorers.items()}
        body = self.dashboard.data(since, serving)
        body["worker"]["url"] = self.worker_url
        body["process"] = {"pid": os.getpid(),
                           "pool": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))}
        return body

    async def _run(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WORKER_TIMEOUT_SECONDS))
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.sample()
            except Exception:  # noqa: BLE001 - a chart with a gap, never a dead sampler
                log.warning("dashboard sample failed", exc_info=True)
            next_at += self.interval if self._watched() else IDLE_SECONDS
            next_at = max(next_at, loop.time())  # after a long stall, no burst of samples
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), next_at - loop.time())
            next_at = min(next_at, loop.time())

    def _watched(self) -> bool:
        return time.monotonic() - self._watched_at < WATCHED_SECONDS

    async def sample(self) -> None:
        if not self._watched():
            # Nobody looks: the learners' state only (one Redis round trip). Parsing two
            # expositions holds the GIL for tens of milliseconds, which showed in scoring's
            # p99 under load; the rates of the next watched sample span the gap.
            self.dashboard.observe(time.time(), None, None, await self._learners(),
                                   metrics_read=False)
            return
        worker_text, learners = await asyncio.gather(self._worker_metrics(),
                                                     self._learners())
        # Parsing and the pool's exposition (files, under --workers N) stay off the loop.
        worker, api = await asyncio.to_thread(self._parse, worker_text)
        self.dashboard.observe(time.time(), worker, api, learners)

    @staticmethod
    def _parse(worker_text: str | None) -> tuple[Scrape | None, Scrape]:
        api = parse(m.exposition()[0].decode())
        return (parse(worker_text) if worker_text is not None else None), api

    async def _worker_metrics(self) -> str | None:
        d = self.dashboard
        try:
            async with self._session.get(self.worker_url) as resp:
                resp.raise_for_status()
                text = await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if d.worker_error is None:
                log.warning("dashboard: the worker's metrics (%s) do not answer: %s",
                            self.worker_url, reason)
            d.worker_error = reason
            return None
        if d.worker_error is not None:
            log.info("dashboard: the worker's metrics answer again")
        d.worker_error = None
        return text

    async def _learners(self) -> dict[str, dict[str, str]] | None:
        d = self.dashboard
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys in self.keys.values():
                    pipe.hmget(keys.learner, list(self.LEARNER_FIELDS))
                rows = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis down: a gap in the chart
            d.redis_error = f"Redis unavailable: {type(exc).__name__}"
            return None
        d.redis_error = None
        out = {}
        for name, row in zip(self.keys, rows, strict=True):
            if row and row[0] is not None:
                out[name] = {f: (v.decode() if v is not None else None)
                             for f, v in zip(self.LEARNER_FIELDS, row, strict=True)}
        return out


SAMPLER = web.AppKey("dashboard_sampler", Sampler)


# ---- handlers ----------------------------------------------------------------------------

async def dashboard_page(request: web.Request) -> web.Response:
    """The dashboard page: HTML with its CSS and script inline, nothing fetched elsewhere."""
    return web.Response(text=PAGE, content_type="text/html", headers=PAGE_HEADERS)


async def dashboard_data(request: web.Request) -> web.Response:
    """What the page polls: ``?since=<t>`` gives only the samples after ``t`` (the ``now``
    of an earlier answer)."""
    raw = request.query.get("since")
    since = None
    if raw is not None:
        since = finite(raw)
        if since is None:
            return error(422, "invalid query", {"since": "a number: the time of a sample"})
    return web.json_response(request.app[SAMPLER].data(since),
                             headers={"Cache-Control": "no-store"})


PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # The page loads nothing from elsewhere and may only poll its own origin.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                               "style-src 'unsafe-inline'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Driftline · live</title>
<link rel="icon" href="data:,">
<style>
  :root {
    --bg: #f3f5f8; --panel: #fff; --text: #1c2430; --muted: #64707d; --line: #e1e6ec;
    --grid: #eceff3; --events: #2f7de1; --labels: #17a673; --scores: #8e5bd6;
    --metric: #d9822b; --p50: #2f7de1; --p99: #d64545; --drift: #d64545; --promotion: #17a673;
  }
  * { box-sizing: border-box; }
  body { margin: 0; background: var(--bg); color: var(--text);
         font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
  header { display: flex; align-items: baseline; gap: 24px; flex-wrap: wrap;
           padding: 14px 24px; background: #1c2430; color: #fff; }
  header h1 { margin: 0; font-size: 20px; font-weight: 600; }
  header h1 small { font-weight: 400; color: #aab4bf; margin-left: 6px; }
  .status { display: flex; gap: 18px; flex-wrap: wrap; font-size: 13px; color: #d0d7de; }
  .dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%;
         margin-right: 6px; background: #8b98a5; vertical-align: 0; }
  .dot.ok { background: #3ecf8e; } .dot.bad { background: #ff6b6b; }
  main { padding: 16px 24px 8px; display: grid; gap: 16px; }
  .panel { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
           padding: 14px 16px; }
  .panel h2 { margin: 0 0 10px; font-size: 16px; font-weight: 600; display: flex;
              align-items: baseline; gap: 10px; flex-wrap: wrap; }
  .panel h2 .sub { font-size: 13px; font-weight: 400; color: var(--muted); }
  .stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr));
           gap: 10px; margin-bottom: 12px; }
  .stat { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
  .stat .label { font-size: 12px; color: var(--muted); white-space: nowrap; }
  .stat .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums;
                 white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  .stat .value.mono { font: 600 17px/1.6 ui-monospace, "DejaVu Sans Mono", monospace; }
  .stat .hint { font-size: 11px; color: var(--muted); }
  .charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr));
            gap: 14px; }
  .chart h3 { margin: 0 0 4px; font-size: 13px; font-weight: 600; }
  .legend { font-size: 12px; color: var(--muted); display: flex; gap: 12px; flex-wrap: wrap;
            margin-bottom: 4px; }
  .legend i { display: inline-block; width: 12px; height: 3px; margin-right: 4px;
              vertical-align: middle; }
  .legend i.mark { width: 2px; height: 11px; }
  canvas { width: 100%; height: 190px; display: block; }
  .idle { color: var(--muted); padding: 8px 16px; }
  .idle h2 { margin: 0; font-size: 14px; }
  .idle .stats, .idle .charts { display: none; }
  #error { display: none; margin: 16px 24px 0; padding: 10px 14px; border-radius: 6px;
           background: #fdecec; color: #9b1c1c; border: 1px solid #f5c2c2; }
  footer { padding: 4px 24px 18px; font-size: 12px; color: var(--muted); }
</style>
</head>
<body>
<header>
  <h1>Driftline <small>live dashboard</small></h1>
  <div class="status">
    <span><span class="dot" id="worker-dot"></span>worker <span id="worker-status">…</span></span>
    <span><span class="dot" id="redis-dot"></span>Redis <span id="redis-status">…</span></span>
    <span>updated <span id="updated">never</span></span>
  </div>
</header>
<div id="error" role="alert"></div>
<main>
  <section class="panel" id="api-panel">
    <h2>Scoring API <span class="sub" id="api-sub">requests/s of every route but the
      dashboard's; latency of the scoring routes over the last 10 s</span></h2>
    <div class="stats">
      <div class="stat"><div class="label">requests/s</div>
        <div class="value" id="api-rate" data-value="">—</div></div>
      <div class="stat"><div class="label">score latency p50</div>
        <div class="value" id="api-p50" data-value="">—</div></div>
      <div class="stat"><div class="label">score latency p99</div>
        <div class="value" id="api-p99" data-value="">—</div></div>
    </div>
    <div class="charts">
      <div class="chart"><h3>Score latency (ms)</h3>
        <div class="legend"><span><i style="background:var(--p50)"></i>p50</span>
          <span><i style="background:var(--p99)"></i>p99</span></div>
        <canvas id="api-latency-chart"></canvas></div>
      <div class="chart"><h3>Requests per second</h3>
        <div class="legend"><span><i style="background:var(--scores)"></i>requests/s</span></div>
        <canvas id="api-rate-chart"></canvas></div>
    </div>
  </section>
  <div id="pipelines" style="display:grid;gap:16px"></div>
</main>
<footer id="footer">Sampled every 2 s by the API process that answers; the last 30 minutes
  are kept.</footer>
<script>
"use strict";
const COLORS = {};
for (const k of ["events", "labels", "scores", "metric", "p50", "p99", "drift", "promotion",
                 "grid", "muted", "text"]) {
  COLORS[k] = getComputedStyle(document.documentElement).getPropertyValue("--" + k).trim();
}
const METRIC_NAMES = {roc_auc: "ROC AUC", log_loss: "log loss", accuracy: "accuracy",
                      mae: "MAE", rmse: "RMSE"};
const state = {since: null, now: null, interval: 2, window: 1800,
               api: {t: [], requests: [], p50: [], p99: []}, pipelines: {}};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function fmtRate(v) {
  if (v === null || v === undefined) return "—";
  if (v < 10) return v.toFixed(1);
  return Math.round(v).toLocaleString("en-US");
}
function fmtCount(v) {
  return v === null || v === undefined ? "—" : Math.round(v).toLocaleString("en-US");
}
function fmtMs(v) {
  if (v === null || v === undefined) return "—";
  return (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : Math.round(v)) + " ms";
}
function fmtMetric(v) { return v === null || v === undefined ? "—" : v.toFixed(3); }

function show(id, value, text) {
  const node = document.getElementById(id);
  if (!node) return;
  node.textContent = text;
  node.dataset.value = value === null || value === undefined ? "" : String(value);
}

// Append the samples newer than what we hold, and forget what left the window.
function merge(series, incoming, names, now, window) {
  const last = series.t.length ? series.t[series.t.length - 1] : -Infinity;
  incoming.t.forEach((t, i) => {
    if (t <= last) return;
    for (const n of names) series[n].push(incoming[n][i]);
  });
  let drop = 0;
  while (drop < series.t.length && series.t[drop] < now - window) drop++;
  if (drop) for (const n of names) series[n].splice(0, drop);
}

function pipelineCard(name, p) {
  const metric = METRIC_NAMES[p.metric] || p.metric;
  const stat = (key, label, hint, mono) => el("div", {class: "stat"},
    el("div", {class: "label"}, label),
    el("div", {class: "value" + (mono ? " mono" : ""), id: `${name}-${key}`,
               "data-value": ""}, "—"),
    ...(hint ? [el("div", {class: "hint"}, hint)] : []));
  const card = el("section", {class: "panel idle", id: `pipeline-${name}`},
    el("h2", {}, name, el("span", {class: "sub", id: `${name}-sub`}, `${p.task} · ${metric}`)),
    el("div", {class: "stats"},
       stat("version", "model version (serving)", "", true),
       stat("events-rate", "events/s (worker)", "consumed, dead letters included"),
       stat("labels-rate", "labels learned/s", "predict first, then learn"),
       stat("learned", "labels learned", "by the online model, all revisions"),
       stat("api-rate", "API scores/s", "champion and challenger"),
       stat("metric", `${metric} (prequential)`,
            (p.lower_is_better ? "lower is better; " : "higher is better; ")
            + "current revision, rolling"),
       stat("drifts", "drift detections", "since the worker started"),
       stat("promotions", "promotions", "since the worker started")),
    el("div", {class: "charts"},
       el("div", {class: "chart"}, el("h3", {}, "Throughput (per second)"),
          el("div", {class: "legend"},
             el("span", {}, el("i", {style: "background:var(--events)"}), "events"),
             el("span", {}, el("i", {style: "background:var(--labels)"}), "labels learned"),
             el("span", {}, el("i", {style: "background:var(--scores)"}), "API scores")),
          el("canvas", {id: `${name}-throughput-chart`})),
       el("div", {class: "chart"}, el("h3", {}, `Prequential ${metric}, current revision`),
          el("div", {class: "legend"},
             el("span", {}, el("i", {style: "background:var(--metric)"}), metric),
             el("span", {}, el("i", {class: "mark", style: "background:var(--drift)"}),
                "drift detected"),
             el("span", {}, el("i", {class: "mark", style: "background:var(--promotion)"}),
                "model promoted")),
          el("canvas", {id: `${name}-metric-chart`}))));
  return card;
}

function ingest(d) {
  state.now = d.now; state.interval = d.interval || 2; state.window = d.window || 1800;
  if (d.now === null) return;
  merge(state.api, d.api.series, ["t", "requests", "p50", "p99"], d.now, state.window);
  for (const [name, p] of Object.entries(d.pipelines)) {
    let s = state.pipelines[name];
    if (!s) {
      s = state.pipelines[name] = {
        series: {t: [], events: [], labels: [], scores: [], metric: []}, markers: [],
        card: pipelineCard(name, p)};
      document.getElementById("pipelines").append(s.card);
    }
    s.info = p;
    merge(s.series, p.series, ["t", "events", "labels", "scores", "metric"], d.now,
          state.window);
    const lastMark = s.markers.length ? s.markers[s.markers.length - 1].t : -Infinity;
    for (const mk of p.markers) if (mk.t > lastMark) s.markers.push(mk);
    s.markers = s.markers.filter(mk => mk.t >= d.now - state.window);
  }
  state.since = d.now;
}

// 2: events or scores in the window; 1: a model that has learned; 0: idle (folded).
function rank(s) {
  if (s.series.events.some(v => v > 0) || s.series.scores.some(v => v > 0)) return 2;
  return (s.info.current.learned || 0) > 0 ? 1 : 0;
}

function render(d) {
  const api = d.api.current;
  show("api-rate", api.requests, fmtRate(api.requests));
  show("api-p50", api.p50, fmtMs(api.p50));
  show("api-p99", api.p99, fmtMs(api.p99));
  const w = d.worker, r = d.redis;
  document.getElementById("worker-dot").className = "dot " + (w.up ? "ok" : "bad");
  document.getElementById("worker-status").textContent =
    (w.up ? "up" : "down") + " · " + w.url.replace(/^https?:\/\//, "").replace(/\/metrics$/, "")
    + (w.up || !w.error ? "" : " (" + w.error + ")");
  document.getElementById("redis-dot").className = "dot " + (r.up ? "ok" : "bad");
  document.getElementById("redis-status").textContent = r.up ? "ok" : (r.error || "down");
  document.getElementById("updated").textContent =
    d.now ? new Date(d.now * 1000).toLocaleTimeString("en-GB") : "not yet sampled";
  document.getElementById("footer").textContent =
    `Sampled every ${state.interval} s by API process ${d.process.pid}`
    + (d.process.pool ? " (figures of the API are the pool's)" : "")
    + `; the last ${Math.round(state.window / 60)} minutes are kept.`;
  const names = Object.keys(state.pipelines);
  names.sort((a, b) => rank(state.pipelines[b]) - rank(state.pipelines[a]));
  const holder = document.getElementById("pipelines");
  for (const name of names) {
    const s = state.pipelines[name], c = s.info.current, t = s.info.totals;
    holder.append(s.card);  // keeps the order: busy pipelines first, idle ones last
    s.card.classList.toggle("idle", rank(s) === 0);
    show(`${name}-version`, c.version, c.version || "—");
    show(`${name}-events-rate`, c.events, fmtRate(c.events));
    show(`${name}-labels-rate`, c.labels, fmtRate(c.labels));
    show(`${name}-learned`, c.learned, fmtCount(c.learned));
    show(`${name}-api-rate`, c.scores, fmtRate(c.scores));
    show(`${name}-metric`, c.metric, fmtMetric(c.metric));
    show(`${name}-drifts`, t.drift, fmtCount(t.drift));
    show(`${name}-promotions`, t.promotions, fmtCount(t.promotions));
    const metric = METRIC_NAMES[s.info.metric] || s.info.metric;
    document.getElementById(`${name}-sub`).textContent = `${s.info.task} · ${metric}`
      + (c.revision !== null && c.revision !== undefined
         ? ` · registry revision ${c.revision}` : "")
      + (c.metric_labels ? ` · ${fmtCount(c.metric_labels)} labels scored by it` : "")
      + (rank(s) ? "" : ` · idle: no events yet (model ${c.version || "none"})`);
  }
  draw();
}

function xRange() {
  const t1 = state.now || Date.now() / 1000;
  let first = state.api.t.length ? state.api.t[0] : t1;
  for (const s of Object.values(state.pipelines)) if (s.series.t.length)
    first = Math.min(first, s.series.t[0]);
  return [Math.min(first, t1 - 60), t1];
}

function draw() {
  const x = xRange();
  drawChart(document.getElementById("api-latency-chart"), {x, series: [
    {t: state.api.t, v: state.api.p50, color: COLORS.p50},
    {t: state.api.t, v: state.api.p99, color: COLORS.p99}], yMin: 0, fmt: v => fmtNum(v)});
  drawChart(document.getElementById("api-rate-chart"), {x, series: [
    {t: state.api.t, v: state.api.requests, color: COLORS.scores}], yMin: 0,
    fmt: v => fmtNum(v)});
  for (const [name, s] of Object.entries(state.pipelines)) {
    if (s.card.classList.contains("idle")) continue;
    const se = s.series;
    drawChart(document.getElementById(`${name}-throughput-chart`), {x, series: [
      {t: se.t, v: se.events, color: COLORS.events},
      {t: se.t, v: se.labels, color: COLORS.labels},
      {t: se.t, v: se.scores, color: COLORS.scores}], yMin: 0, fmt: v => fmtNum(v)});
    const bounded = ["roc_auc", "accuracy"].includes(s.info.metric);
    drawChart(document.getElementById(`${name}-metric-chart`), {x, series: [
      {t: se.t, v: se.metric, color: COLORS.metric}],
      floor: bounded ? 0 : null, ceil: bounded ? 1 : null, fmt: v => v.toFixed(3),
      markers: s.markers.map(mk => ({t: mk.t, label: mk.label,
                                     color: mk.kind === "drift" ? COLORS.drift
                                                                : COLORS.promotion}))});
  }
}

function fmtNum(v) {
  const a = Math.abs(v);
  if (a >= 1000) return (v / 1000).toFixed(a >= 10000 ? 0 : 1) + "k";
  if (a >= 10 || v === 0) return v.toFixed(0);
  return v.toFixed(a >= 1 ? 1 : 2);
}

function niceStep(span, target) {
  const raw = span / target, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const f of [1, 2, 2.5, 5, 10]) if (raw <= f * mag) return f * mag;
  return 10 * mag;
}

function drawChart(canvas, o) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, 'DejaVu Sans', sans-serif";
  const pad = {l: 46, r: 12, t: 18, b: 20};
  const [t0, t1] = o.x;
  let lo = Infinity, hi = -Infinity;
  for (const s of o.series) s.v.forEach((v, i) => {
    if (v === null || s.t[i] < t0) return;
    lo = Math.min(lo, v); hi = Math.max(hi, v);
  });
  const empty = lo === Infinity;
  if (empty) { lo = 0; hi = 1; }
  if (o.yMin !== undefined) lo = Math.min(lo, o.yMin);
  if (hi - lo < 1e-9) { hi = lo + (Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1); }
  const margin = (hi - lo) * 0.08;
  if (o.yMin === undefined) lo -= margin;
  hi += margin;
  if (o.floor !== null && o.floor !== undefined) lo = Math.max(lo, o.floor);
  if (o.ceil !== null && o.ceil !== undefined) hi = Math.min(hi, o.ceil);
  const step = niceStep(hi - lo, 4);
  lo = Math.floor(lo / step) * step; hi = Math.ceil(hi / step) * step;
  const X = t => pad.l + (t - t0) / (t1 - t0) * (w - pad.l - pad.r);
  const Y = v => h - pad.b - (v - lo) / (hi - lo) * (h - pad.t - pad.b);
  // grid and axes
  ctx.strokeStyle = COLORS.grid; ctx.fillStyle = COLORS.muted; ctx.lineWidth = 1;
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let v = lo; v <= hi + step / 2; v += step) {
    const y = Math.round(Y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.fillText(o.fmt(Math.abs(v) < step / 1e6 ? 0 : v), pad.l - 6, y);
  }
  const tStep = [5, 10, 15, 30, 60, 120, 300, 600, 900].find(s => (t1 - t0) / s <= 6) || 1800;
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (let t = Math.ceil(t0 / tStep) * tStep; t <= t1; t += tStep) {
    const x = X(t);
    ctx.beginPath(); ctx.moveTo(x, pad.t); ctx.lineTo(x, h - pad.b); ctx.stroke();
    const label = new Date(t * 1000).toLocaleTimeString("en-GB",
      tStep >= 60 ? {hour: "2-digit", minute: "2-digit"} : {});
    const half = ctx.measureText(label).width / 2;
    if (x - half >= pad.l - 4 && x + half <= w) ctx.fillText(label, x, h - pad.b + 4);
  }
  // markers: a dashed line, a triangle at the top, and a label on the first row where it
  // overlaps no other label
  const rows = [];
  for (const mk of o.markers || []) {
    if (mk.t < t0) continue;
    const x = Math.round(X(mk.t)) + 0.5;
    ctx.save(); ctx.strokeStyle = mk.color; ctx.lineWidth = 1.5; ctx.setLineDash([4, 3]);
    ctx.beginPath(); ctx.moveTo(x, pad.t); ctx.lineTo(x, h - pad.b); ctx.stroke();
    ctx.restore();
    ctx.fillStyle = mk.color; ctx.beginPath();
    ctx.moveTo(x - 5, pad.t - 7); ctx.lineTo(x + 5, pad.t - 7); ctx.lineTo(x, pad.t); ctx.fill();
    const tw = ctx.measureText(mk.label).width;
    const left = x + 6 + tw <= w ? x + 6 : x - 6 - tw;
    let row = rows.findIndex(right => right < left - 4);
    if (row < 0) { row = rows.length; rows.push(0); }
    rows[row] = left + tw;
    const y = pad.t - 13 + row * 14;
    ctx.fillStyle = "rgba(255,255,255,0.85)"; ctx.fillRect(left - 2, y - 1, tw + 4, 13);
    ctx.fillStyle = mk.color; ctx.textAlign = "left"; ctx.textBaseline = "top";
    ctx.fillText(mk.label, left, y);
  }
  // series, broken where a sample is missing
  for (const s of o.series) {
    ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.lineWidth = 2;
    ctx.beginPath();
    let pen = false, lone = [];
    s.v.forEach((v, i) => {
      if (v === null || s.t[i] < t0) { pen = false; return; }
      const x = X(s.t[i]), y = Y(v);
      const next = s.v[i + 1];
      if (!pen && (next === null || next === undefined)) lone.push([x, y]);
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    });
    ctx.stroke();
    for (const [x, y] of lone) { ctx.beginPath(); ctx.arc(x, y, 2.5, 0, 2 * Math.PI); ctx.fill(); }
  }
  if (empty) {
    ctx.fillStyle = COLORS.muted; ctx.textAlign = "center"; ctx.textBaseline = "middle";
    ctx.font = "13px system-ui, 'DejaVu Sans', sans-serif";
    ctx.fillText("waiting for data", (pad.l + w - pad.r) / 2, (pad.t + h - pad.b) / 2);
  }
}

async function poll() {
  const box = document.getElementById("error");
  try {
    const url = "dashboard/data" + (state.since !== null ? "?since=" + state.since : "");
    const resp = await fetch(url, {cache: "no-store", credentials: "same-origin"});
    if (resp.status === 401 || resp.status === 403) {
      throw new Error("the API asks for a token: add /dashboard/data to "
                      + "DRIFTLINE_API_OPEN_PATHS to open the dashboard");
    }
    if (!resp.ok) throw new Error(`GET /dashboard/data answered ${resp.status}`);
    const d = await resp.json();
    ingest(d);
    render(d);
    box.style.display = "none";
  } catch (exc) {
    box.textContent = "Live data unavailable: " + exc.message + " (retrying)";
    box.style.display = "block";
  } finally {
    setTimeout(poll, Math.max(1000, state.interval * 1000 / 2));
  }
}
window.addEventListener("resize", () => draw());
poll();
</script>
</body>
</html>
"""
