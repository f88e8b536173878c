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

    @classmethod
    def for_pipeline(cls, pipeline: str, namespace: str = "") -> PipelineTopics:
        base = f"{namespace}.{pipeline}" if namespace else pipeline
        return cls(**{kind: f"{base}.{kind}" for kind in cls.__dataclass_fields__})

    def partitions(self, keyed: int) -> dict[str, int]:
        """Partition count of each topic: the learner's input and the dead letters have one."""
        return {name: (1 if kind in ("training", "deadletter") else keyed)
                for kind, name in self.__dict__.items()}
