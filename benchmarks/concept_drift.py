"""Concept drift, proven on a known stream: River's Agrawal generator with an abrupt
change of concept, replayed through Kafka with delayed labels.

    python benchmarks/concept_drift.py --events 12000 --rate 200 --seed 1

Starts a worker and a retrainer for the ``agrawal`` pipeline in a namespace of their own,
sends the stream, waits until every label is learned, and prints (and writes to
``benchmarks/results/concept-drift-<seed>.json``):

* the detection delay: labels of post-drift events the learner saw before ADWIN fired;
* the served accuracy before the drift (its last 1,000 events), just after it (the first
  500 events after it), and of the events scored by the promoted challenger;
* the same figures for the same model computed by River in-process on the same stream
  (predict each event, learn each label when it arrives; no retrain), for comparison.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import ensure_pipeline_topics
from driftline.adapters.stores import RedisKeys
from driftline.adapters.topic_reader import read_topic
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import retrainer_process, worker_process
from driftline.tools.stack import LocalStack
from driftline.tools.synthetic import produce
from online_models.spec import build_model, predict
from streams.catalog.agrawal import AGRAWAL
from streams.generators.agrawal import AgrawalGenerator, AgrawalStreamConfig
from streams.schemas import ControlEvent, TrainingExample, parse
from streams.topics import PipelineTopics

RESULTS = Path(__file__).resolve().parent / "results"
BEFORE, JUST_AFTER = 1000, 500


@dataclass
class DriftProof:
    events: int
    drift_index: int                       # the first event labeled by the new concept
    detection_delay: int | None            # post-drift labels learned before the detection
    promoted_version: int | None
    promoted_after: int | None             # post-drift labels learned before the promotion
    accuracy: dict[str, float | None]      # served: before, just_after, after_promotion
    river: dict[str, float | None]         # in-process, same events
    labels_after_promotion: int
    control: list[str] = field(default_factory=list)  # kinds on the control topic, in order


def stream_config(events: int, seed: int, run_id: str) -> AgrawalStreamConfig:
    return AgrawalStreamConfig(events=events, seed=seed, run_id=run_id, source_prefix=run_id,
                               start_time=time.time() - events / 10.0)


def index_of(event_id: str) -> int:
    return int(event_id.rsplit("-", 1)[1])


def accuracy(pairs: list[tuple[bool, float]]) -> float | None:
    return sum((p >= 0.5) == y for y, p in pairs) / len(pairs) if pairs else None


def in_process(config: AgrawalStreamConfig) -> dict[int, float]:
    """Each event's score by the pipeline's model run in-process by River: predict when
    the event comes, learn when its label does (the same delayed-label order)."""
    model = build_model(AGRAWAL.model)
    features, scores = {}, {}
    for e in AgrawalGenerator(config).emissions():
        if e.kind == "event":
            x = {name: float(getattr(e.record, name)) for name in AGRAWAL.feature_names}
            features[e.record.event_id] = x
            scores[index_of(e.record.event_id)] = predict(model, "binary", x)
        else:
            model.learn_one(features.pop(e.record.event_id), e.record.approved)
    return scores


def segments(examples: list[tuple[int, TrainingExample]], drift: int,
             promoted: int | None) -> dict[str, list[int]]:
    """Event indices of each segment: before, just after the drift, after the promotion."""
    idx = sorted(index_of(ex.event_id) for _, ex in examples)
    pre = [i for i in idx if i < drift][-BEFORE:]
    post = [i for i in idx if i >= drift][:JUST_AFTER]
    after = sorted(index_of(ex.event_id) for _, ex in examples
                   if promoted is not None
                   and ex.model_version.partition(".")[0] == f"v{promoted}")
    return {"before": pre, "just_after": post, "after_promotion": after}


def analyse(settings: Settings, config: AgrawalStreamConfig) -> DriftProof:
    topics = PipelineTopics.for_spec(AGRAWAL, settings.namespace)
    drift = int(config.drift_at * config.events)
    examples = [(r.offset, parse(TrainingExample, r.value))
                for r in read_topic(settings, topics.training)]
    control = [parse(ControlEvent, r.value) for r in read_topic(settings, topics.control)]
    post_offsets = sorted(off for off, ex in examples if index_of(ex.event_id) >= drift)
    detection = next((c for c in control if c.kind == "concept_drift"
                      and c.evidence.get("direction") == "up"
                      and c.offset is not None and post_offsets
                      and c.offset >= post_offsets[0]), None)
    promotion = next((c for c in control if c.kind == "promoted" and c.reason == "drift"), None)
    promoted_version = promotion.registry_version if promotion else None

    def labels_before(offset: int | None) -> int | None:
        return None if offset is None else sum(o <= offset for o in post_offsets)

    served = {index_of(ex.event_id): (bool(ex.label), ex.score) for _, ex in examples}
    river_scores = in_process(config)
    segs = segments(examples, drift, promoted_version)
    # A promotion's control event carries no training offset: the last example of the
    # old revision learned before it is the nearest one.
    promoted_after = None
    if promoted_version is not None:
        first_new = min((off for off, ex in examples
                         if ex.model_version.startswith(f"v{promoted_version}.")), default=None)
        promoted_after = labels_before(first_new)
    return DriftProof(
        events=config.events, drift_index=drift,
        detection_delay=labels_before(detection.offset) if detection else None,
        promoted_version=promoted_version, promoted_after=promoted_after,
        accuracy={k: accuracy([served[i] for i in v]) for k, v in segs.items()},
        river={k: accuracy([(served[i][0], river_scores[i]) for i in v])
               for k, v in segs.items()},
        labels_after_promotion=len(segs["after_promotion"]),
        control=[c.kind for c in control])


def run_through_kafka(settings: Settings, events: int, seed: int, rate: float, logs: Path,
                      timeout: float = 300.0) -> DriftProof:
    """Worker and retrainer up, the stream through Kafka at ``rate`` events/s, every label
    learned: the figures. The caller owns the namespace (and its cleanup)."""
    import redis

    ensure_pipeline_topics(settings, "agrawal")
    config = stream_config(events, seed, uuid.uuid4().hex[:8])
    worker = worker_process(settings, logs, ["agrawal"]).start()
    retrainer = retrainer_process(settings, logs, ["agrawal"]).start()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        produce(settings, "agrawal", AgrawalGenerator(config).emissions(),
                speed=rate / config.events_per_second)
        deadline = time.monotonic() + timeout
        key = RedisKeys(settings.redis_prefix, "agrawal").learner
        while int(client.hget(key, "updates") or 0) < events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"labels learned: {client.hget(key, 'updates')} of {events}")
            time.sleep(1.0)
    finally:
        client.close()
        retrainer.stop()
        worker.stop()
    return analyse(settings, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=12_000)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    base = Settings.from_env()
    LocalStack(base).up()
    with scratch_namespace(base, base.prefixed(f"bench-{uuid.uuid4().hex[:6]}")) as s:
        proof = run_through_kafka(s, args.events, args.seed, args.rate,
                                  s.data_dir / "logs" / s.namespace)

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    print(f"agrawal, {proof.events} events, drift at event {proof.drift_index}, "
          f"seed {args.seed}, {args.rate:.0f} events/s")
    print(f"detection delay      {proof.detection_delay} labels after the drift")
    print(f"promoted             registry version {proof.promoted_version}, "
          f"{proof.promoted_after} labels after the drift")
    print(f"{'accuracy':<20} {'driftline':>10} {'river in-process':>17}")
    for seg, label in (("before", f"before (last {BEFORE})"),
                       ("just_after", f"just after (first {JUST_AFTER})"),
                       ("after_promotion", f"after promotion ({proof.labels_after_promotion})")):
        print(f"{label:<28} {pct(proof.accuracy[seg]):>6} {pct(proof.river[seg]):>12}")
    print("control events       " + ", ".join(proof.control))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"concept-drift-{args.seed}.json"
    out.write_text(json.dumps({**asdict(proof), "rate": args.rate, "seed": args.seed},
                              indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
