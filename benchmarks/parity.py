"""Served-score parity: do the scores the worker served keep up with its learner?

    python benchmarks/parity.py --datasets phishing bananas agrawal --rate 200 --label-delay 20

For each data set, starts one worker (that pipeline only, a namespace of its own), sends
the stream through Kafka at ``--rate`` events/s with each label ``--label-delay`` events'
worth of time after its event (20: 0.1 s at 200 events/s), waits until every label is
learned, reads the topics back and prints (and writes to ``benchmarks/results/parity.json``):

* the prequential accuracy of the scores the worker **served**: each training example's
  ``score``, given before its label existed, by the model of its ``model_version``;
* the same for the pipeline's model run by River **in-process** on the same feature dicts
  in the same order with the same label delay: each event predicted, each label learned, in
  the order the producer sent them (so a label is learned once the events sent before it
  are predicted); and the difference in points, in-process minus served (goal: within 0.5),
  over the whole stream and over its second half (without the start, where the worker
  serves the untrained model until its first snapshot while River learns from the first
  label: a short data set pays for that start more);
* **labels behind**: for each served score, the labels the learner had learned when the
  event was scored minus the N of the ``vR.N`` that scored it (median, p99). The moment is
  the prediction's ``scored_at`` (``<ns>.<p>.predictions``: when the worker scored it).
  The learner's count at a moment is the worker's ``driftline_labels_learned_total``
  (counted as each label is learned), read every ``--sample-seconds`` from its /metrics
  while the stream runs and interpolated linearly between two readings (each timed at its
  answer: the same machine's clock). Beside it,
  the labels *sent* before the moment (the labels topic's create times) minus N: what a
  learner with no latency would have had, so the difference is the worker's own latency
  from a label's arrival to its learning;
* how long after it was sent (its Kafka create time) each event was scored;
* when the worker exposes the histogram ``driftline_label_to_serving_seconds`` (a label
  seen by the worker to a model that includes it serving), its p50 and p99.

The data sets: ``phishing`` and ``bananas`` replay River's bundled Phishing and Bananas data
sets (labels exactly the delay later); ``agrawal`` replays River's synthetic Agrawal stream
with its concept drift half-way (its generator adds up to 50% to each label's delay).
``--events`` caps each one. The worker runs with the configured settings, which is what
this judges; ``--snapshot-every``, ``--snapshot-seconds`` and ``--model-refresh-seconds``
change them.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import ensure_pipeline_topics
from driftline.adapters.topic_reader import TopicRecord, read_topic
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import worker_process
from driftline.tools.stack import LocalStack
from driftline.tools.synthetic import produce
from monitoring.quantiles import histogram_quantile
from monitoring.scrape import Scrape, scrape
from online_models import evaluation
from online_models.spec import build_model, predict
from streams.declarations import PipelineSpec
from streams.generators import GENERATORS, pipeline_history
from streams.generators.base import Emission
from streams.parity import compare, recompute
from streams.pipelines import PIPELINES
from streams.schemas import Prediction, TrainingExample, parse

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("phishing", "bananas", "agrawal")
GOAL_POINTS = 0.5
HISTOGRAM = "driftline_label_to_serving_seconds"
SETTINGS = ("snapshot_every", "snapshot_seconds", "model_refresh_seconds")


@dataclass
class Parity:
    pipeline: str
    events: int
    label_delay_events: dict[str, float]   # measured, in events' worth of event time
    served: dict[str, float]               # prequential metrics of the served scores
    in_process: dict[str, float]           # the same model, by River in-process
    difference_points: float               # accuracy, in-process minus served, in points
    second_half: dict[str, float]          # accuracy of both and the difference, 2nd half
    labels_behind: dict[str, float]        # the learner's count minus N
    labels_behind_sent: dict[str, float]   # the labels sent minus N
    scoring_delay_seconds: dict[str, float]  # an event's scored_at minus its create time
    model_versions_served: int
    features_identical: bool               # the served features are the replayed ones
    label_to_serving_seconds: dict[str, float | None] | None  # None: no such histogram
    load_average: float = 0.0              # the machine's, over the minute before the run


def summary(values: list[float]) -> dict[str, float]:
    """Median, p99 and max."""
    p99 = statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 \
        else values[0]
    return {"median": statistics.median(values), "p99": round(p99, 1), "max": max(values)}


def history(spec: PipelineSpec, events: int, label_delay: float,
            run_id: str) -> tuple[float, list[Emission]]:
    """The pipeline's stream of ``events`` ending now, each label ``label_delay`` events'
    worth of event time after its event; with the generator's event rate."""
    eps = GENERATORS[spec.generator][1].events_per_second
    config, emissions = pipeline_history(spec, events, time.time(), run_id=run_id,
                                         label_delay=label_delay / eps)
    return config.events_per_second, list(emissions)


def label_delays(spec: PipelineSpec, emissions: list[Emission], eps: float) -> list[float]:
    """Each label's delay after its event, in events' worth of event time."""
    sent = {spec.event_id_of(e.record): e.at for e in emissions if e.kind == "event"}
    return [(e.at - sent[spec.event_id_of(e.record)]) * eps
            for e in emissions if e.kind == "label"]


def in_process(spec: PipelineSpec, emissions: list[Emission],
               features: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each event's score by the pipeline's model run by River in-process: predicted when
    the event is sent, learned when its label is (the order the producer followed)."""
    model = build_model(spec.model)
    scores: dict[str, float] = {}
    for e in emissions:
        event_id = spec.event_id_of(e.record)
        if e.kind == "event":
            scores[event_id] = predict(model, spec.task, features[event_id])
        else:
            model.learn_one(features[event_id],
                            evaluation.as_label(spec.task, spec.target_of(e.record)))
    return scores


def prequential(spec: PipelineSpec, pairs: Iterable[tuple[bool | float, float]]
                ) -> dict[str, float]:
    """The pipeline's metrics over (label, score) pairs, as its learner computes them."""
    ms = evaluation.new_metrics(spec.task, spec.metrics)
    for label, score in pairs:
        evaluation.update(ms, spec.task, label, score)
    return {name: round(v, 5) for name, v in evaluation.values(ms).items()}


def labels_behind(served: list[TrainingExample], scored_at: dict[str, float],
                  count_at: Callable[[float], float]) -> list[float]:
    """For each served score: the labels counted when it was scored minus the labels its
    model had learned (the N of ``vR.N``)."""
    return [round(count_at(scored_at[ex.event_id])
                  - int(ex.model_version.partition(".")[2] or 0), 1) for ex in served]


def sent_before(times: list[float]) -> Callable[[float], float]:
    """How many of ``times`` came at or before a moment."""
    ordered = sorted(times)
    return lambda t: bisect.bisect_right(ordered, t)


def interpolated(samples: list[tuple[float, float]]) -> Callable[[float], float]:
    """A count at any moment from (time, count) readings: linear between two of them.

    >>> count = interpolated([(10.0, 0.0), (11.0, 200.0)])
    >>> count(9.0), count(10.25), count(12.0)
    (0.0, 50.0, 200.0)
    """
    times = [t for t, _ in samples]

    def count(t: float) -> float:
        i = bisect.bisect_right(times, t)
        if i == 0:
            return samples[0][1]
        if i == len(samples):
            return samples[-1][1]
        (t0, c0), (t1, c1) = samples[i - 1], samples[i]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0)
    return count


class LearnedSampler(threading.Thread):
    """Reads the worker's count of labels learned every ``every`` seconds, in a thread."""

    def __init__(self, metrics_url: str, pipeline: str, every: float) -> None:
        super().__init__(daemon=True)
        self.url, self.pipeline, self.every = metrics_url, pipeline, every
        self.samples: list[tuple[float, float]] = []  # (when it answered, labels learned)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                reading = scrape(self.url)
            except OSError:  # busy past the scrape's timeout: the next reading
                continue
            learned = reading.value("driftline_labels_learned_total", pipeline=self.pipeline)
            self.samples.append((time.time(), learned))
            self.stopped.wait(self.every)

    def wait_for(self, labels: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.samples or self.samples[-1][1] < labels:
            if time.monotonic() > deadline:
                learned = self.samples[-1][1] if self.samples else 0
                raise TimeoutError(f"{self.pipeline}: labels learned: {learned:.0f} of {labels}")
            time.sleep(self.every)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def label_to_serving(metrics: Scrape, pipeline: str) -> dict[str, float | None] | None:
    """p50 and p99 of the worker's histogram, when it has one (buckets summed over any
    other labels)."""
    counts: dict[float, float] = {}
    for labels, value in metrics.get(f"{HISTOGRAM}_bucket", []):
        if labels.get("pipeline", pipeline) == pipeline:
            le = float(labels["le"])
            counts[le] = counts.get(le, 0.0) + value
    if not counts:
        return None
    buckets = sorted(counts.items())
    if not buckets[-1][1]:
        return {"p50": None, "p99": None, "count": 0}
    return {"p50": histogram_quantile(0.5, buckets), "p99": histogram_quantile(0.99, buckets),
            "count": buckets[-1][1]}


def analyse(spec: PipelineSpec, eps: float, emissions: list[Emission],
            topics: dict[str, list[TopicRecord]], learned: list[tuple[float, float]],
            metrics: Scrape) -> Parity:
    events = [e.record for e in emissions if e.kind == "event"]
    labels = {spec.event_id_of(e.record): evaluation.as_label(spec.task,
                                                               spec.target_of(e.record))
              for e in emissions if e.kind == "label"}
    served = [parse(TrainingExample, r.value) for r in topics["training"]]
    by_id = {ex.event_id: ex for ex in served}
    if len(by_id) < len(events):
        raise RuntimeError(f"{spec.name}: {len(by_id)} of {len(events)} events in the training log")
    scored_at = {p.event_id: p.scored_at
                 for p in (parse(Prediction, r.value) for r in topics["predictions"])}
    created = {spec.event_id_of(parse(spec.event_type, r.value)): r.timestamp
               for r in topics["events"]}
    features = recompute(spec, events)
    river = in_process(spec, emissions, features)
    ids = [spec.event_id_of(e) for e in events]
    ours = prequential(spec, ((labels[i], by_id[i].score) for i in ids))
    theirs = prequential(spec, ((labels[i], river[i]) for i in ids))
    late = ids[len(ids) // 2:]
    ours_late = prequential(spec, ((labels[i], by_id[i].score) for i in late))["accuracy"]
    theirs_late = prequential(spec, ((labels[i], river[i]) for i in late))["accuracy"]
    return Parity(
        pipeline=spec.name, events=len(events),
        label_delay_events=summary(label_delays(spec, emissions, eps)),
        served=ours, in_process=theirs,
        difference_points=round(100 * (theirs["accuracy"] - ours["accuracy"]), 2),
        second_half={"served": ours_late, "in_process": theirs_late,
                     "difference_points": round(100 * (theirs_late - ours_late), 2)},
        labels_behind=summary(labels_behind(served, scored_at, interpolated(learned))),
        labels_behind_sent=summary(labels_behind(
            served, scored_at, sent_before([r.timestamp for r in topics["labels"]]))),
        scoring_delay_seconds=summary([round(scored_at[i] - created[i], 4) for i in ids]),
        model_versions_served=len({ex.model_version for ex in served}),
        features_identical=compare(features, served).ok,
        label_to_serving_seconds=label_to_serving(metrics, spec.name))


def run(base: Settings, pipeline: str, args: argparse.Namespace) -> Parity:
    """One worker on one data set, in a namespace removed afterwards: the figures."""
    spec = PIPELINES[pipeline]
    overrides = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    namespace = base.prefixed(f"parity-{uuid.uuid4().hex[:6]}")
    with scratch_namespace(base, namespace, worker_port=free_port(), **overrides) as s:
        names = ensure_pipeline_topics(s, pipeline)
        eps, emissions = history(spec, args.events, args.label_delay, uuid.uuid4().hex[:8])
        load = os.getloadavg()[0]  # anything else busy skews every figure here
        worker = worker_process(s, s.data_dir / "logs" / s.namespace, [pipeline]).start()
        sampler = LearnedSampler(s.worker_metrics_url, pipeline, args.sample_seconds)
        sampler.start()
        try:
            produce(s, pipeline, emissions, speed=args.rate / eps)
            sampler.wait_for(sum(e.kind == "label" for e in emissions), args.timeout)
            metrics = scrape(s.worker_metrics_url)
        finally:
            sampler.stop()
            worker.stop()
        topics = {kind: list(read_topic(s, getattr(names, kind)))
                  for kind in ("training", "predictions", "labels", "events")}
    result = analyse(spec, eps, emissions, topics, sampler.samples, metrics)
    result.load_average = load
    return result


def report(p: Parity) -> list[str]:
    def behind(d: dict[str, float]) -> str:
        return f"median {d['median']:.0f}, p99 {d['p99']:.0f}"

    def met(points: float) -> str:
        return f"{points:+.2f} points (goal within {GOAL_POINTS}: " \
               f"{'met' if abs(points) <= GOAL_POINTS else 'missed'})"

    d, late = p.label_delay_events, p.second_half
    lines = [
        f"{p.pipeline}: {p.events} events, labels {d['median']:.1f} events' worth later "
        f"(max {d['max']:.1f}), {p.model_versions_served} model versions served "
        f"(load average {p.load_average:.2f} before)",
        f"  accuracy          served {p.served['accuracy']:.4f}, in-process "
        f"{p.in_process['accuracy']:.4f}: {met(p.difference_points)}",
        f"    second half     served {late['served']:.4f}, in-process "
        f"{late['in_process']:.4f}: {met(late['difference_points'])}",
        f"  labels behind     {behind(p.labels_behind)} (the learner's); "
        f"{behind(p.labels_behind_sent)} (the labels sent)",
        f"  scored            {p.scoring_delay_seconds['median']:.3f} s after sent (median), "
        f"p99 {p.scoring_delay_seconds['p99']:.3f} s",
    ]
    h = p.label_to_serving_seconds
    if h is not None:
        lines.append(f"  label to serving  p50 {h['p50']:.3f} s, p99 {h['p99']:.3f} s "
                     f"({h['count']:.0f} model swaps)" if h["count"] else
                     "  label to serving  no model swap observed")
    if not p.features_identical:
        lines.append("  features          the served ones differ from the replay's")
    return lines


def main() -> None:
    binary = sorted(n for n, p in PIPELINES.items()
                    if p.task == "binary" and p.generator and "accuracy" in p.metrics)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=binary,
                        metavar="PIPELINE", help=f"binary pipelines: {', '.join(binary)}")
    parser.add_argument("--events", type=int, default=6000,
                        help="at most this many events of each data set")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--label-delay", type=float, default=20.0,
                        help="events' worth of time from an event to its label")
    parser.add_argument("--snapshot-every", type=int, default=None,
                        help="labels between two model snapshots (default: the setting)")
    parser.add_argument("--snapshot-seconds", type=float, default=None,
                        help="seconds between two model snapshots (default: the setting)")
    parser.add_argument("--model-refresh-seconds", type=float, default=None,
                        help="how often scorers look for a snapshot (default: the setting)")
    parser.add_argument("--sample-seconds", type=float, default=0.25,
                        help="how often the worker's count of labels learned is read")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for the labels to be learned, per data set")
    args = parser.parse_args()

    base = Settings.from_env()
    LocalStack(base).up()
    used = base.with_overrides(**{k: getattr(args, k) for k in SETTINGS
                                  if getattr(args, k) is not None})
    print(f"{args.rate:.0f} events/s, labels {args.label_delay:g} events' worth later; "
          f"a snapshot every {used.snapshot_every} labels or {used.snapshot_seconds:g} s, "
          f"scorers refresh every {used.model_refresh_seconds:g} s")
    results = []
    for pipeline in args.datasets:
        results.append(run(base, pipeline, args))
        print("\n".join(report(results[-1])), flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "parity.json"
    out.write_text(json.dumps({
        "rate": args.rate, "label_delay_events": args.label_delay, "goal_points": GOAL_POINTS,
        "settings": {k: getattr(used, k) for k in SETTINGS},
        "labels_behind": "the worker's labels learned at the prediction's scored_at (its "
                         "/metrics read every sample_seconds, interpolated), minus the N of "
                         "the vR.N that scored it; _sent: the labels topic's records created "
                         "by then, minus N",
        "sample_seconds": args.sample_seconds,
        "datasets": {p.pipeline: asdict(p) for p in results},
    }, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
