"""``driftline replay <pipeline>``: the training-serving parity check against Kafka.

Reads the raw events topic and the training log, recomputes every event's features with
the pipeline's own feature code (:mod:`streams.parity`) and reports any difference with
the features that were served.
"""

from __future__ import annotations

from driftline.adapters.config import Settings
from driftline.adapters.topic_reader import read_topic
from streams.parity import ParityReport, compare, recompute
from streams.pipelines import PIPELINES
from streams.schemas import InvalidRecord, TrainingExample, parse
from streams.topics import PipelineTopics


def replay(settings: Settings, pipeline: str, timeout: float = 120.0) -> ParityReport:
    spec = PIPELINES[pipeline]
    topics = PipelineTopics.for_spec(spec, settings.namespace)

    def events():
        for record in read_topic(settings, topics.events, timeout):
            try:
                yield parse(spec.event_type, record.value)
            except InvalidRecord:
                continue  # dead-lettered online

    replayed = recompute(spec, events())
    logged = (parse(TrainingExample, r.value) for r in read_topic(settings, topics.training,
                                                                  timeout))
    online_only = set(spec.model_feature_names) - set(spec.feature_names)
    return compare(replayed, logged, online_only)
