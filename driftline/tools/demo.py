"""``driftline demo``: one pipeline, live, for about a minute.

It brings the local stack up, starts the worker, the retrainer and the API as child
processes, streams the pipeline's synthetic events (with a few malformed ones) and their
delayed labels through Kafka, prints progress every few seconds, then scores hand-made
cases through the API, tells the model's life from the control topic and the registry,
and prints a summary. The stack is left running; ``driftline stack down`` stops it.
"""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
import urllib.request
import uuid

import redis

from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import ensure_pipeline_topics
from driftline.adapters.kafka_clients import kafka_producer
from driftline.adapters.stores import RedisKeys
from driftline.tools.namespaces import remove_namespace
from driftline.tools.processes import api_process, retrainer_process, worker_process
from driftline.tools.stack import LocalStack
from driftline.tools.synthetic import ProduceReport, produce
from monitoring.scrape import Scrape, scrape
from streams.generators import pipeline_history
from streams.generators.fraud import probe_cases
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics

PROGRESS_EVERY = 5.0
# Events per wall-clock second, kept below what one worker sustains on a 2-core machine
# (see benchmarks/freshness.py): pricing has long rides, so more labels in flight.
# fraud_knn waits for one Milvus search per scored event.
DEFAULT_RATE = {"fraud": 200.0, "fraud_knn": 60.0, "pricing": 100.0, "agrawal": 200.0}


def run_demo(settings: Settings, pipeline: str = "fraud", seconds: float = 60.0,
             rate: float | None = None, keep: bool = False) -> int:
    rate = rate or DEFAULT_RATE.get(pipeline, 100.0)
    print(f"== Driftline demo: the {pipeline} pipeline, learning from delayed labels ==",
          flush=True)
    LocalStack(settings).up()
    if not (settings.redis_password and settings.model_key):  # the first `up` writes them
        written = Settings.from_env()
        settings = settings.with_overrides(
            redis_password=settings.redis_password or written.redis_password,
            model_key=settings.model_key or written.model_key)
    # Each demo runs in a namespace of its own, so that it starts from an untrained model
    # and never meets the event times of an earlier run (which would be late data).
    run_id = uuid.uuid4().hex[:8]
    settings = settings.with_overrides(namespace=settings.prefixed(f"demo-{run_id}"))
    print(f"namespace {settings.namespace}: topics {settings.namespace}.{pipeline}.*", flush=True)
    ensure_pipeline_topics(settings, pipeline)
    logs = settings.data_dir / "logs"
    worker = worker_process(settings, logs, [pipeline])
    retrainer = retrainer_process(settings, logs, [pipeline])
    api = api_process(settings, logs)
    print(f"starting the worker, the retrainer and the API (logs: {logs})", flush=True)
    worker.start()
    retrainer.start()
    api.start()
    metrics_url = settings.worker_metrics_url  # where the dashboard reads it too
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    print(f"live dashboard: {api_url}/dashboard (open it in a browser while the demo runs)",
          flush=True)
    try:
        return _stream_and_report(settings, pipeline, seconds, rate, metrics_url, api_url,
                                  run_id)
    finally:
        api.stop()
        retrainer.stop()
        worker.stop()
        if not keep:
            remove_namespace(settings)
            shutil.rmtree(settings.data_dir / "worker" / settings.app_id, ignore_errors=True)
            print("removed the demo's topics, keys and vectors (--keep keeps them)")
        print("worker, retrainer and API stopped; the stack is still up "
              "(`driftline stack down` stops it)")


def _stream_and_report(settings: Settings, pipeline: str, seconds: float, rate: float,
                       metrics_url: str, api_url: str, run_id: str) -> int:
    spec = PIPELINES[pipeline]
    # Replayed history that ends now, `speed` times faster than it happened.
    config, emissions = pipeline_history(spec, int(seconds * rate), time.time(),
                                         run_id=run_id)
    speed = rate / config.events_per_second
    report = ProduceReport()
    done = threading.Event()
    labels: list[float] = []

    def producer() -> None:
        nonlocal report
        try:
            report = produce(settings, pipeline, _keep_labels(spec, emissions, labels),
                             speed=speed, malformed_every=2_000)
        finally:
            done.set()

    baseline = scrape(metrics_url)
    print(f"{spec.name}: {spec.description}")
    print(f"streaming {config.events} events at {rate:.0f}/s ({speed:.0f}x event time), each "
          "label later; one malformed event in 2000", flush=True)
    headline = spec.metrics[0]
    print(f"{'t':>5}  {'events/s':>8}  {'processed':>9}  {'dead':>4}  {'learned':>7}  "
          f"{headline:>8}  model", flush=True)
    thread = threading.Thread(target=producer, daemon=True)
    started = time.monotonic()
    thread.start()
    last, last_t = baseline, started
    drain_until = None
    while True:
        time.sleep(PROGRESS_EVERY)
        now_s = scrape(metrics_url)
        now_t = time.monotonic()
        rate_now = (_processed(now_s, pipeline) - _processed(last, pipeline)) / (now_t - last_t)
        _progress_line(now_t - started, rate_now, now_s, baseline, pipeline, headline)
        last, last_t = now_s, now_t
        if done.is_set() and drain_until is None:
            drain_until = now_t + 60
        learned = _delta(now_s, baseline, "driftline_labels_learned_total", pipeline)
        if drain_until and (now_t >= drain_until or learned >= report.events):
            break
    thread.join()
    time.sleep(settings.snapshot_seconds + 1)  # the last snapshot reaches Redis and the API

    showcase = SHOWCASES[pipeline](settings, api_url, run_id, pipeline)
    promoted = _lifecycle_report(settings, api_url, pipeline)
    if pipeline == "agrawal":
        showcase = showcase and promoted

    final = scrape(metrics_url)
    values = {name: final.value("driftline_prequential_metric", pipeline=pipeline, metric=name)
              for name in spec.metrics}
    fresh_n = _delta(final, baseline, "driftline_feature_freshness_seconds_count", pipeline)
    fresh_s = _delta(final, baseline, "driftline_feature_freshness_seconds_sum", pipeline)
    print("\n-- summary --")
    print(f"produced     {report.events} events, {report.labels} labels, {report.malformed} "
          f"malformed, in {report.seconds:.0f}s")
    print(f"processed    {_processed(final, pipeline) - _processed(baseline, pipeline):.0f} "
          f"events; dead-lettered {_dead(final, baseline, pipeline):.0f}")
    print(f"learned      {_delta(final, baseline, 'driftline_labels_learned_total', pipeline):.0f}"
          f" labels (predict first, then learn)")
    print("prequential  " + ", ".join(f"{k} {v:.3f}" for k, v in values.items())
          + f" (rolling, last {settings.metric_window} labels, of the scores served)")
    if fresh_n:
        print(f"freshness    mean {1000 * fresh_s / fresh_n:.1f} ms from production to features "
              "in Redis")
    if spec.task == "binary":
        ok = values["roc_auc"] > 0.8 and showcase
    else:
        # Better than the best constant answer for MAE (the median), over the same labels.
        window = labels[-settings.metric_window:]
        median = statistics.median(window)
        naive = statistics.fmean(abs(y - median) for y in window)
        print(f"baseline     MAE {naive:.3f} of always answering the median of those labels")
        ok = values["mae"] < naive and showcase
    print("result       " + ("OK: the pipeline learned" if ok
                             else "NOT OK: the model did not learn well enough"))
    return 0 if ok else 1


def _keep_labels(spec, emissions, out: list[float]):
    for e in emissions:
        if e.kind == "label":
            out.append(float(spec.target_of(e.record)))
        yield e


def _fraud_showcase(settings: Settings, api_url: str, run_id: str, pipeline: str) -> bool:
    print(f"\n-- two cases scored through the API (POST /v1/score/{pipeline}) --", flush=True)
    cases = probe_cases(time.time(), run_id)
    _send_histories(settings, pipeline, [t for c in cases.values() for t in c.history])
    scores, served = {}, {}
    for name, case in cases.items():
        body = _post(f"{api_url}/v1/score/{pipeline}", case.probe.model_dump())
        scores[name] = body["probability"]
        served[name] = features = body["features"]
        print(f"{name:>13}: probability {body['probability']:.3f} (model {body['model_version']};"
              f" amount {features['amount']:.2f}, {features['count_1m']:.0f} txns in the last "
              f"minute, {features['distinct_merchants_10m']:.0f} merchants in 10 min)",
              flush=True)
        print(f"{'':>13}  why: " + ", ".join(f"{c['feature']} {c['contribution']:+.3f}"
                                            for c in body["contributions"][:3]), flush=True)
    neighbour = PIPELINES[pipeline].embeddings.neighbour_feature
    if neighbour:
        print(f"{'':>13}  the neighbour feature {neighbour}: card testing "
              f"{served['card_testing'][neighbour]:.2f}, normal {served['normal'][neighbour]:.2f}")
    similar = _similar_cases(api_url, pipeline, cases["card_testing"].probe.model_dump())
    return scores["card_testing"] > scores["normal"] and similar


def _similar_cases(api_url: str, pipeline: str, event: dict) -> bool:
    """Which labeled past events (and entities) look like ``event``: Milvus, via the API."""
    print(f"\n-- similar past cases from Milvus (POST /v1/similar/{pipeline}) --", flush=True)
    url = f"{api_url}/v1/similar/{pipeline}"
    nearest = _post(url, {"event": event, "k": 10})["neighbours"]
    if not nearest:
        print("no labeled events in Milvus yet")
        return False
    positives = sum(bool(n["label"]) for n in nearest)
    print(f"the 10 labeled payments nearest to the card-testing probe: {positives} fraud, "
          f"{10 - positives} legitimate")
    now = time.time()
    for n in _post(url, {"event": event, "k": 3, "label": True})["neighbours"]:
        print(f"  fraud {n['event_id']} of {n['entity']}, {(now - n['event_time']) / 60:.0f} "
              f"min ago (event time), distance {n['distance']:.3f}, scored {n['score']:.3f} "
              f"by {n['model_version']}")
    card = nearest[0]["entity"]
    cards = _post(url, {"entity": card, "kind": "entities", "k": 3})["neighbours"]
    print(f"cards whose profiles are nearest to {card}'s: " + ", ".join(
        f"{c['entity']} (fraud rate {c['label_rate']:.2f} over {c['events']} labels)"
        for c in cards))
    return positives > 0


def _pricing_showcase(settings: Settings, api_url: str, run_id: str, pipeline: str) -> bool:
    print("\n-- the same 5 km ride priced through the API (POST /v1/score/pricing) --",
          flush=True)
    client = redis.Redis.from_url(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix, "pricing")
    pressure = {}
    for key in client.scan_iter(match=keys.features("*")):
        zone = key.decode().rsplit(":", 1)[1]
        value = client.hget(key, "demand_supply")
        if value is not None:
            pressure[zone] = float(value)
    client.close()
    if len(pressure) < 2:
        print("not enough zones in Redis to compare")
        return False
    busy, quiet = max(pressure, key=pressure.get), min(pressure, key=pressure.get)
    prices = {}
    for label, zone in (("busiest zone", busy), ("quietest zone", quiet)):
        ride = {"event_id": f"{run_id}-{zone}", "zone_id": zone, "distance_km": 5.0,
                "duration_min": 15.0, "active_drivers": 20, "ts": time.time()}
        body = _post(f"{api_url}/v1/score/pricing", ride)
        prices[label] = body["prediction"]
        print(f"{label:>13}: {zone}, demand/supply {pressure[zone]:.2f}: predicted price "
              f"{body['prediction']:.2f} (model {body['model_version']})", flush=True)
    return prices["busiest zone"] > prices["quietest zone"]


def _no_showcase(settings: Settings, api_url: str, run_id: str, pipeline: str) -> bool:
    return True


def _lifecycle_report(settings: Settings, api_url: str, pipeline: str) -> bool:
    """The control topic's story (drift, retrains, promotions) and the registry; returns
    whether a retrain promoted a challenger."""
    from driftline.adapters.topic_reader import read_topic
    from streams.schemas import ControlEvent, parse

    print(f"\n-- the model's life (<p>.control, GET /v1/models/{pipeline}) --", flush=True)
    topic = PipelineTopics.for_spec(PIPELINES[pipeline], settings.namespace).control
    promoted = False
    for rec in read_topic(settings, topic):
        ev = parse(ControlEvent, rec.value)
        evidence = ev.evidence
        if ev.kind.endswith("_drift"):
            detail = (f"error {evidence.get('error_mean_before', float('nan')):.2f} -> "
                      f"{evidence.get('error_mean_recent', float('nan')):.2f} "
                      f"({evidence.get('direction')})"
                      if ev.kind == "concept_drift"
                      else f"worst feature {evidence.get('worst')}")
            print(f"{ev.kind:<17} at {ev.model_version:<10} by {ev.reason}: {detail}")
        elif ev.kind in ("retrain_rejected", "promoted") and "metric" in evidence:
            metric = evidence["metric"]
            print(f"{ev.kind:<17} challenger {metric} {evidence['challenger'][metric]:.3f} vs "
                  f"champion {evidence['champion'][metric]:.3f} on "
                  f"{evidence['holdout_examples']} hold-out labels"
                  + (f" -> registry v{ev.registry_version}" if ev.registry_version else ""))
            promoted = promoted or ev.kind == "promoted"
        else:
            print(f"{ev.kind:<17} {ev.reason}")
    status = json.loads(urllib.request.urlopen(f"{api_url}/v1/models/{pipeline}",
                                               timeout=30).read())
    print(f"serving          {status['serving']['version']}")
    for rev, stats in status["prequential"].items():
        figures = ", ".join(f"{k} {v:.3f}" for k, v in stats.items() if k != "labels")
        print(f"prequential {rev:<4} {figures} ({stats['labels']:.0f} labels)")
    for v in status.get("registry", {}).get("versions", []):
        lineage = v["lineage"]
        print(f"registry v{v['version']}{' (champion)' if v['champion'] else ''}: "
              f"{lineage['reason']}, parent {lineage['parent']}, {lineage['examples']} examples")
    return promoted


SHOWCASES = {"fraud": _fraud_showcase, "fraud_knn": _fraud_showcase,
             "pricing": _pricing_showcase, "agrawal": _no_showcase}


def _processed(reading: Scrape, pipeline: str) -> float:
    return reading.value("driftline_events_total", pipeline=pipeline, kind="event", outcome="ok")


def _dead(now: Scrape, base: Scrape, pipeline: str) -> float:
    return _delta(now, base, "driftline_deadletters_total", pipeline)


def _delta(now: Scrape, base: Scrape, name: str, pipeline: str) -> float:
    return now.value(name, pipeline=pipeline) - base.value(name, pipeline=pipeline)


def _progress_line(t: float, rate: float, current: Scrape, base: Scrape, pipeline: str,
                   headline: str) -> None:
    learned = _delta(current, base, "driftline_labels_learned_total", pipeline)
    auc = current.value("driftline_prequential_metric", pipeline=pipeline, metric=headline)
    updates = current.value("driftline_model_updates", pipeline=pipeline)
    revision = current.value("driftline_model_revision", pipeline=pipeline)
    processed = _processed(current, pipeline) - _processed(base, pipeline)
    print(f"{t:5.0f}  {rate:8.0f}  {processed:9.0f}  {_dead(current, base, pipeline):4.0f}  "
          f"{learned:7.0f}  {auc:8.3f}  v{revision:.0f}.{updates:.0f}", flush=True)


def _send_histories(settings: Settings, pipeline: str, events) -> None:
    spec = PIPELINES[pipeline]
    topics = PipelineTopics.for_spec(spec, settings.namespace)
    producer = kafka_producer(settings)
    for event in events:
        producer.produce(topics.events, key=spec.entity_of(event), value=event.to_json())
    producer.flush(10)
    time.sleep(3)  # the worker writes their features to Redis


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())
