"""Send a generated stream to Kafka with confluent-kafka, paced in wall-clock time.

Events go to ``<p>.events`` keyed by entity, labels to ``<p>.labels`` keyed by event id,
each at its emission time scaled by ``rate / events_per_second`` of the generator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from driftline.adapters.config import Settings
from driftline.adapters.kafka_clients import kafka_producer
from streams.generators.base import Emission
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics


@dataclass
class ProduceReport:
    events: int = 0
    labels: int = 0
    malformed: int = 0
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def produce(settings: Settings, pipeline: str, emissions: Iterable[Emission], *,
            speed: float | None = 1.0, malformed_every: int = 0,
            on_progress: Callable[[ProduceReport], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> ProduceReport:
    """Send ``emissions``; ``speed`` is event-seconds per wall-second (None: no pacing).

    With ``malformed_every=K``, every K-th event is followed by a malformed one (text in
    its event-time field), to show that bad input is dead-lettered, not lost.
    """
    spec = PIPELINES[pipeline]
    topics = PipelineTopics.for_spec(spec, settings.namespace)
    producer = kafka_producer(settings)
    report = ProduceReport()
    started = time.monotonic()
    first_at: float | None = None
    last_progress = started
    errors: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            errors.append(str(err))

    for e in emissions:
        if should_stop():
            break
        if first_at is None:
            first_at = e.at
        if speed:
            wait = (e.at - first_at) / speed - (time.monotonic() - started)
            if wait > 0:
                producer.poll(0)
                time.sleep(wait)
        if e.kind == "event":
            producer.produce(topics.events, key=e.key, value=e.record.to_json(),
                             on_delivery=on_delivery)
            report.events += 1
            if malformed_every and report.events % malformed_every == 0:
                bad = e.record.model_dump()
                bad[spec.time_field] = "yesterday"
                producer.produce(topics.events, key=e.key,
                                 value=json.dumps(bad).encode(),
                                 on_delivery=on_delivery)
                report.malformed += 1
        else:
            producer.produce(topics.labels, key=e.key, value=e.record.to_json(),
                             on_delivery=on_delivery)
            report.labels += 1
        producer.poll(0)
        now = time.monotonic()
        if on_progress and now - last_progress >= 1.0:
            report.seconds = now - started
            on_progress(report)
            last_progress = now
    producer.flush(30)
    report.seconds = time.monotonic() - started
    if errors:
        raise RuntimeError(f"{len(errors)} records were not delivered; first: {errors[0]}")
    return report
