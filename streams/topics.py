"""Topic names of a pipeline, in one place.

>>> names = PipelineTopics.for_pipeline("fraud", namespace="t1")
>>> names.events, names.deadletter
('t1.fraud.events', 't1.fraud.deadletter')
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineTopics:
    events: str       # users' producers -> worker, keyed by entity
    labels: str       # users' producers -> worker, keyed by event id
    predictions: str  # worker -> users, keyed by entity
    join: str         # worker-internal: snapshots and labels, both keyed by event id
    training: str     # worker -> learner: labeled examples (one partition: one learner)
    deadletter: str   # every consumer -> operators, with the reason
    control: str      # learner, retrainer, operators: drift, retrains, promotions (one partition)

    @classmethod
    def for_pipeline(cls, pipeline: str, namespace: str = "", *, events: str | None = None,
                     labels: str | None = None) -> PipelineTopics:
        """Conventional names under the namespace; a declared input topic is used as is."""
        base = f"{namespace}.{pipeline}" if namespace else pipeline
        names = {kind: f"{base}.{kind}" for kind in cls.__dataclass_fields__}
        names["events"] = events or names["events"]
        names["labels"] = labels or names["labels"]
        return cls(**names)

    @classmethod
    def for_spec(cls, spec, namespace: str = "") -> PipelineTopics:
        """The topics of a :class:`~streams.declarations.PipelineSpec`."""
        return cls.for_pipeline(spec.name, namespace, events=spec.events_topic,
                                labels=spec.labels_topic)

    def partitions(self, keyed: int) -> dict[str, int]:
        """Partition count of each topic: the learner's input, the dead letters and the
        control events have one (each is read in one total order)."""
        return {name: (1 if kind in ("training", "deadletter", "control") else keyed)
                for kind, name in self.__dict__.items()}
