"""Every Prometheus metric Driftline exports, defined once.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms); each
carries the pipeline as a label. docs/operations.md lists them with their meaning, and
ARCHITECTURE.md indexes them by stage (a unit test checks that every one is there).
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

# The _created series double the exposition for no use on a dashboard.
disable_created_metrics()

# ---- stream worker ------------------------------------------------------------------
EVENTS = Counter("driftline_events_total",
                 "Records consumed by the worker, by input kind and outcome",
                 ["pipeline", "kind", "outcome"])  # kind: event|label; outcome: ok|deadletter
BATCH_RETRIES = Counter("driftline_batch_retries_total",
                        "Batches held and handled again because a store (Redis, Milvus, "
                        "Kafka) did not answer", ["pipeline", "kind"])
DEADLETTERS = Counter("driftline_deadletters_total",
                      "Records sent to the dead-letter topic, by reason",
                      ["pipeline", "reason"])
EVENT_SECONDS = Histogram("driftline_event_processing_seconds",
                          "Time to validate, featurize, score and emit one event",
                          ["pipeline"],
                          buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
FEATURE_FRESHNESS = Histogram("driftline_feature_freshness_seconds",
                              "From an event's production (its Kafka timestamp) to its "
                              "features readable in Redis",
                              ["pipeline"],
                              buckets=(.001, .0025, .005, .0075, .01, .015, .02, .03, .05, .075,
                                       .1, .15, .2, .3, .5, .75, 1, 2.5, 5, 10, 30))
LATE_EVENTS = Counter("driftline_late_events_total",
                      "Events beyond the allowed lateness, dead-lettered", ["pipeline"])
DUPLICATE_EVENTS = Counter("driftline_duplicate_events_total",
                           "Redelivered events already applied to their entity, skipped",
                           ["pipeline"])
SKIPPED_RECOVERED = Counter("driftline_skipped_records_recovered_total",
                            "Records Faust's stream skipped after a start or rebalance, "
                            "fetched directly and processed", ["pipeline", "kind"])
JOINED = Counter("driftline_training_examples_total",
                 "Snapshots joined with their label and written to the training topic",
                 ["pipeline"])
LABELS_FORWARDED = Counter("driftline_labels_forwarded_total",
                           "Labels found on another partition than their snapshot's, forwarded "
                           "to it (the pipeline's labels_partitioner is not the producer's)",
                           ["pipeline"])
JOIN_EXPIRED = Counter("driftline_join_expired_total",
                       "Snapshots or labels dropped after the label-delay bound without a match",
                       ["pipeline", "kind"])

CONSUMER_LAG = Gauge("driftline_consumer_lag",
                     "Records in a partition the worker has not processed yet (the partition's "
                     "end offset minus the next offset to process), per assigned partition",
                     ["pipeline", "topic", "partition"])

# ---- learner ------------------------------------------------------------------------
LABELS_LEARNED = Counter("driftline_labels_learned_total",
                         "Training examples applied to the online model", ["pipeline"])
LABEL_DUPLICATES = Counter("driftline_label_duplicates_total",
                           "Training examples skipped because their event was learned already",
                           ["pipeline"])
LABELS_REPLAYED = Counter("driftline_labels_replayed_total",
                          "Training examples met again after a restart: skipped (in the "
                          "checkpoint already) or fetched (committed past, not checkpointed), "
                          "by reader (learn: the learner; embed: the embedding agent)",
                          ["pipeline", "reader", "action"])
PREQUENTIAL = Gauge("driftline_prequential_metric",
                    "Rolling prequential metric of the current model revision (its served "
                    "scores against the labels that came later)",
                    ["pipeline", "metric"])
PREQUENTIAL_BY_VERSION = Gauge("driftline_prequential_metric_by_version",
                               "Rolling prequential metric of each recent model revision "
                               "(metric 'labels': how many of its scores were labeled)",
                               ["pipeline", "model_version", "metric"])
MODEL_UPDATES = Gauge("driftline_model_updates",
                      "Labels learned by the pipeline's online model, over all revisions",
                      ["pipeline"])
MODEL_REVISION = Gauge("driftline_model_revision",
                       "Registry version the learner serves and learns (0: never promoted)",
                       ["pipeline"])
DRIFT_DETECTIONS = Counter("driftline_drift_detections_total",
                           "Drift detected by the learner: concept (error stream) or feature",
                           ["pipeline", "kind"])
FEATURE_DRIFT = Gauge("driftline_feature_drift",
                      "Per feature, the last comparison of the live window with the "
                      "reference: psi, ks, chi2 statistic or p_value",
                      ["pipeline", "feature", "statistic"])
CONTROL_EVENTS = Counter("driftline_control_events_total",
                         "Model lifecycle events seen on the control topic: drift, retrain "
                         "requests, skips and rejections, promotions",
                         ["pipeline", "kind"])
MODEL_PROMOTIONS = Counter("driftline_model_promotions_total",
                           "Registry versions swapped into the learner and its scorers",
                           ["pipeline", "reason"])
SNAPSHOTS = Counter("driftline_model_snapshots_total", "Model snapshots published",
                    ["pipeline"])
MODEL_UNHEALTHY = Counter("driftline_model_unhealthy_total",
                          "Models found scoring non-finite before publication (not published; "
                          "the learner rolled back to its checkpoint)", ["pipeline"])
BLOBS_REFUSED = Counter("driftline_blobs_refused_total",
                        "Stored model blobs and checkpoints refused before loading, by store "
                        "(snapshot, challenger, checkpoint, embedder, embedding_checkpoint, "
                        "registry) and reason (unsigned, bad_signature, forbidden, unreadable)",
                        ["store", "reason"])

# ---- retrainer ----------------------------------------------------------------------
RETRAINS = Counter("driftline_retrains_total",
                   "Retrain triggers handled by the retrainer, by outcome (promoted, "
                   "rejected, skipped_cooldown, skipped_covered, failed)",
                   ["pipeline", "outcome"])
RETRAIN_SECONDS = Histogram("driftline_retrain_seconds",
                            "Reading the window, training and comparing one challenger",
                            ["pipeline"], buckets=(.5, 1, 2, 5, 10, 20, 30, 60, 120, 300))

# ---- embeddings (Milvus) --------------------------------------------------------------
VECTORS_WRITTEN = Counter("driftline_vectors_written_total",
                          "Vectors upserted into Milvus, by collection kind (events, entities)",
                          ["pipeline", "kind"])
VECTOR_FLUSH_SECONDS = Histogram("driftline_vector_flush_seconds",
                                 "Writing one batch of event and profile vectors to Milvus",
                                 ["pipeline"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
VECTOR_BACKLOG = Gauge("driftline_vector_backlog",
                       "Labeled events applied but not yet written to Milvus (held while the "
                       "standardizer warms up, or while Milvus does not answer)", ["pipeline"])
VECTOR_WRITER_SUSPENDED = Gauge("driftline_vector_writer_suspended",
                                "1 while the embedding agent leaves records to Kafka because "
                                "Milvus or Redis does not answer", ["pipeline"])
NEIGHBOUR_LOOKUPS = Counter("driftline_neighbour_lookups_total",
                            "Neighbour-feature searches by outcome: ok, not_ready (no frozen "
                            "standardizer or no labeled neighbours yet), timeout, error (the "
                            "last three leave the feature out)",
                            ["pipeline", "process", "outcome"])
ENTITIES_FORGOTTEN = Counter("driftline_entities_forgotten_total",
                             "Entities erased on request (features and vectors)", ["pipeline"])

# ---- scoring (worker and API) --------------------------------------------------------
MODEL_VERSION = Gauge("driftline_model_version_info",
                      "1 for the registry revision a scoring process serves now, 0 for the ones "
                      "it served before (the revision, v<registry version>, changes on a "
                      "promotion; driftline_model_updates counts the labels learned since)",
                      ["pipeline", "process", "revision"], multiprocess_mode="liveall")
MODEL_SWAPS = Counter("driftline_model_swaps_total",
                      "Newer model snapshots loaded by a scoring process",
                      ["pipeline", "process"])
PREDICTIONS = Counter("driftline_predictions_total", "Scores served",
                      ["pipeline", "process"])
LABEL_TO_SERVING = Histogram(
    "driftline_label_to_serving_seconds",
    "From a label becoming a training example to a model that learned it serving in this "
    "process (observed at each swap, for the oldest label new in the snapshot)",
    ["pipeline", "process"],
    buckets=(.05, .1, .2, .3, .5, .75, 1, 1.5, 2, 3, 5, 10, 30, 60))

# ---- HTTP API -----------------------------------------------------------------------
HTTP_REQUESTS = Counter("driftline_http_requests_total", "HTTP requests by route and status",
                        ["route", "method", "status"])
HTTP_SECONDS = Histogram("driftline_http_request_seconds",
                         "HTTP request latency by route, method and status",
                         ["route", "method", "status"],
                         buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
API_SCORES = Counter("driftline_api_scores_total",
                     "Events scored by the API, by variant (champion, challenger, shadow: the "
                     "challenger's unreturned score) and outcome (ok, degraded)",
                     ["pipeline", "variant", "outcome"])
API_SCORE_VALUE = Histogram("driftline_api_score",
                            "Scores served by the API per variant (shadow included): a "
                            "probability, or a regression's predicted value",
                            ["pipeline", "variant"],
                            buckets=(.01, .05, .1, .2, .3, .5, .7, .9, 1, 5, 10, 20, 50, 100,
                                     500))
SHADOW_DIFFERENCE = Histogram("driftline_api_shadow_difference",
                              "|challenger - champion| on the same request, in shadow mode",
                              ["pipeline"],
                              buckets=(.001, .005, .01, .05, .1, .2, .5, 1, 5, 10, 50))
DEGRADED = Counter("driftline_api_degraded_total",
                   "Scores answered by the fallback model, by reason (features_timeout, "
                   "features_unavailable, no_model, score_not_finite)", ["pipeline", "reason"])
BATCH_SIZE = Histogram("driftline_api_batch_events", "Events per batch request",
                       ["pipeline"], buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000))
CACHE_LOOKUPS = Counter("driftline_api_cache_lookups_total",
                        "API cache lookups by cache (features, inference) and result (hit, "
                        "miss); driftline_api_cache_hit_ratio is hits over lookups",
                        ["cache", "result"])
AUTH_FAILURES = Counter("driftline_api_auth_failures_total",
                        "Requests refused: 401 (no or unknown token) or 403 (wrong role)",
                        ["status"])


def swapped(pipeline: str, process: str, oldest_label_at: float | None) -> None:
    """Record that ``process`` swapped in a newer snapshot of ``pipeline``, and how long
    its oldest new label took to be served (None: the snapshot does not say)."""
    MODEL_SWAPS.labels(pipeline=pipeline, process=process).inc()
    if oldest_label_at is not None:
        LABEL_TO_SERVING.labels(pipeline=pipeline, process=process).observe(
            max(0.0, time.time() - oldest_label_at))


def serving(pipeline: str, process: str, revision: str, before: str | None) -> None:
    """Record that ``process`` now serves ``revision`` of ``pipeline`` (one series per
    revision, not per snapshot: the label set stays small)."""
    if before is not None and before != revision:
        MODEL_VERSION.labels(pipeline=pipeline, process=process, revision=before).set(0)
    MODEL_VERSION.labels(pipeline=pipeline, process=process, revision=revision).set(1)


class HitRatios:
    """``driftline_api_cache_hit_ratio{cache}``: hits over lookups since the start, computed
    at each scrape from the lookup counters that ``source`` collects (summed over the
    processes of ``driftline serve --workers N``). Rates over a time range are PromQL's:
    ``rate(..._lookups_total{result="hit"}[5m]) / rate(..._lookups_total[5m])``."""

    def __init__(self, source) -> None:
        self.source = source

    def describe(self):
        return [self._family()]

    def collect(self):
        lookups: dict[str, dict[str, float]] = {}
        for family in self.source.collect():
            if family.name != "driftline_api_cache_lookups":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    by_result = lookups.setdefault(sample.labels["cache"], {})
                    result = sample.labels["result"]
                    by_result[result] = by_result.get(result, 0.0) + sample.value
        family = self._family()
        for cache, counts in sorted(lookups.items()):
            total = sum(counts.values())
            if total:
                family.add_metric([cache], counts.get("hit", 0.0) / total)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("driftline_api_cache_hit_ratio",
                                 "API cache hits over lookups since the process (or the "
                                 "serve pool) started, by cache", labels=["cache"])


REGISTRY.register(HitRatios(CACHE_LOOKUPS))


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus' text format, and its content type. Under
    ``driftline serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set), the sum over the
    pool's processes, whichever of them is asked."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        pool = multiprocess.MultiProcessCollector(registry)
        registry.register(HitRatios(pool))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
