"""Feature freshness: from an event's production to its features readable in Redis.

    python benchmarks/freshness.py --pipeline fraud --rate 500 --seconds 30

Starts a worker in a namespace of its own on the local stack, sends the pipeline's
synthetic stream at ``--rate`` events per second, and reads two distributions of the same
events:

* **freshness**, from the worker's ``driftline_feature_freshness_seconds`` histogram
  (p50 and p99 interpolated within its buckets, as Prometheus does);
* **baseline**, the plain Kafka delivery latency of the same events to a bare
  confluent-kafka consumer running in the same command.

The ratio freshness / baseline is the cost of Driftline's processing over Kafka itself,
which holds better than absolute figures on a noisy 2-core machine.

``--warm-labels N`` first replays N earlier events *with* their labels, unpaced, and waits
until they are learned and (for a pipeline that embeds) the embedder is frozen, so that
the measured events meet a trained pipeline: with ``fraud_knn`` each of them then waits
for its neighbour search. Compare ``fraud`` and ``fraud_knn`` with the same arguments.

Results are printed and written to ``benchmarks/results/freshness-<pipeline>-<rate>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer

from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import ensure_pipeline_topics
from driftline.adapters.kafka_clients import client_config
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import worker_process
from driftline.tools.stack import LocalStack
from driftline.tools.synthetic import produce
from monitoring.quantiles import histogram_quantile
from monitoring.scrape import scrape
from streams.generators import pipeline_history
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default="fraud", choices=sorted(PIPELINES))
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warm-labels", type=int, default=0,
                        help="labeled events replayed before the measurement")
    args = parser.parse_args()

    base = Settings.from_env()
    LocalStack(base).up()
    result = measure(base, args.pipeline, args.rate, args.seconds, args.warm_labels)
    RESULTS.mkdir(exist_ok=True)
    warm = f"-warm{args.warm_labels}" if args.warm_labels else ""
    out = RESULTS / f"freshness-{args.pipeline}-{args.rate:.0f}{warm}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


def measure(base: Settings, pipeline: str = "fraud", rate: float = 500.0,
            seconds: float = 30.0, warm_labels: int = 0) -> dict:
    """Freshness and its Kafka baseline at ``rate`` events/s for ``seconds``, with a worker
    of its own in a scratch namespace (also called by ``benchmarks/ingest.py``)."""
    with scratch_namespace(base, base.prefixed(f"bench-{uuid.uuid4().hex[:6]}")) as s:
        ensure_pipeline_topics(s, pipeline)
        topics = PipelineTopics.for_spec(PIPELINES[pipeline], s.namespace)
        worker = worker_process(s, s.data_dir / "logs" / "bench").start()
        try:
            return run(s, topics, pipeline, rate, seconds, warm_labels)
        finally:
            worker.stop()


def run(s: Settings, topics: PipelineTopics, pipeline: str, rate: float, seconds: float,
        warm_labels: int) -> dict:
    latencies: list[float] = []
    stop = threading.Event()
    consumer = Consumer({**client_config(s), "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "latest"})
    consumer.subscribe([topics.events])
    while not consumer.assignment():  # joined before the first event is sent
        consumer.poll(0.2)

    def baseline() -> None:
        while not stop.is_set():
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                latencies.append(time.time() - msg.timestamp()[1] / 1000.0)
        consumer.close()

    reader = threading.Thread(target=baseline, daemon=True)
    reader.start()
    events = int(rate * seconds)
    spec = PIPELINES[pipeline]
    config, emissions = pipeline_history(spec, events, time.time(),
                                         run_id=uuid.uuid4().hex[:8])
    speed = rate / config.events_per_second
    metrics_url = f"http://127.0.0.1:{s.worker_port}/metrics"
    if warm_labels:
        # History that ends where the measured stream starts (no event is late).
        _, history = pipeline_history(spec, warm_labels,
                                      config.start_time - 1.0, run_id=uuid.uuid4().hex[:8])
        produce(s, pipeline, history, speed=None)
        warm_up_learning(s, metrics_url, pipeline, int(0.9 * warm_labels))
    only_events = (e for e in emissions if e.kind == "event")
    # Warm up first (the producer's id, the consumers' first fetches): 3 s of the stream,
    # then measure from a clean baseline.
    warm = int(3 * rate)
    produce(s, pipeline, (next(only_events) for _ in range(warm)), speed=speed)
    wait_processed(metrics_url, pipeline, warm)
    before = scrape(metrics_url)
    latencies.clear()
    report = produce(s, pipeline, only_events, speed=speed)
    after = wait_processed(metrics_url, pipeline, events)
    time.sleep(1)
    stop.set()
    reader.join()

    name = "driftline_feature_freshness_seconds_bucket"
    buckets = sorted((float(lab["le"]), v - before.value(name, pipeline=pipeline,
                                                        le=lab["le"]))
                     for lab, v in after.get(name, []) if lab["pipeline"] == pipeline)
    fresh = {q: histogram_quantile(q, buckets) for q in (0.5, 0.99)}
    base = {q: percentile(latencies, q) for q in (0.5, 0.99)}
    result = {
        "pipeline": pipeline, "offered_rate": rate,
        "events_measured": events - warm,
        "achieved_rate": round(report.events_per_second, 1),
        "freshness_p50_ms": round(1000 * fresh[0.5], 2),
        "freshness_p99_ms": round(1000 * fresh[0.99], 2),
        "kafka_baseline_p50_ms": round(1000 * base[0.5], 2),
        "kafka_baseline_p99_ms": round(1000 * base[0.99], 2),
        "ratio_p50": round(fresh[0.5] / base[0.5], 2),
        "ratio_p99": round(fresh[0.99] / base[0.99], 2),
        "warm_labels": warm_labels,
        "neighbour_searches": after.value("driftline_neighbour_lookups_total",
                                      pipeline=pipeline, outcome="ok")
        - before.value("driftline_neighbour_lookups_total", pipeline=pipeline,
                       outcome="ok"),
        "measured": "freshness: worker histogram (bucket-interpolated); baseline: bare "
                    "consumer in the same run; both from the producer's Kafka timestamp",
    }
    for k, v in result.items():
        print(f"{k:>24}: {v}")
    return result


def warm_up_learning(s: Settings, metrics_url: str, pipeline: str, labels: int,
                     timeout: float = 300.0) -> None:
    """Wait until ``labels`` are learned and, if the pipeline embeds, its embedder is
    published."""
    import redis

    from driftline.adapters.stores import RedisKeys

    client = redis.Redis.from_url(s.redis_url)
    key = RedisKeys(s.redis_prefix, pipeline).embedding
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        learned = scrape(metrics_url).value("driftline_labels_learned_total", pipeline=pipeline)
        if learned >= labels and (PIPELINES[pipeline].embeddings is None
                                  or client.hexists(key, "embedder")):
            break
        time.sleep(1)
    client.close()


def wait_processed(metrics_url: str, pipeline: str, n: int, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        current = scrape(metrics_url)
        done = current.value("driftline_events_total", pipeline=pipeline, kind="event",
                             outcome="ok")
        if done >= n or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


if __name__ == "__main__":
    main()
