"""The dashboard's view logic, without I/O: one reading of the worker's metrics, the API's
metrics and the learners' hashes at a time goes in (:meth:`Dashboard.observe`), the JSON the
page polls comes out (:meth:`Dashboard.data`).

Apart from :mod:`serving.dashboard.sampler`, which does the reading, so that the arithmetic
(counter resets, rates, latency percentiles from histogram deltas, drift and promotion
markers, the rolling history) is tested by its doctests alone, with no worker, Redis or
event loop. Rates come from the deltas of Prometheus counters between two samples; the p50
and p99 latency of the scoring routes from the deltas of the latency histogram's buckets
over the last :data:`LATENCY_SAMPLES` samples, interpolated inside a bucket as Prometheus'
``histogram_quantile``; a drift marker is where the worker's
``driftline_drift_detections_total`` went up, a promotion marker where the learner's
revision changed (a rollback included).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from monitoring.quantiles import histogram_quantile
from monitoring.scrape import Scrape
from online_models.evaluation import bigger_is_better

SAMPLE_SECONDS = 2.0           # between two samples
KEEP_SECONDS = 30 * 60         # history kept per pipeline
LATENCY_SAMPLES = 5            # latency percentiles over this many sample intervals (10 s)
MAX_MARKERS = 500              # per pipeline, besides the time bound
# The dashboard's own routes, not counted as API traffic (the page polls every second).
OWN_ROUTES = frozenset({"/dashboard", "/dashboard/data", "/dashboard/static/{name}"})
SCORE_ROUTE_PREFIX = "/v1/score/"  # whose latency is shown


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

    >>> from monitoring.scrape import parse
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

    >>> from monitoring.scrape import parse
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
