"""Vectors for similar-case search: labeled events and time-decayed entity profiles. Pure.

An event's vector is its *standardized feature vector*, not a learned projection:

* each embedded feature is compressed with ``sign(x) * log1p(|x|)`` (amounts and counts are
  heavy-tailed: without it one large amount would dominate every distance), then
  standardized with River's :class:`~river.preprocessing.StandardScaler`;
* the scaler learns from the first ``fit_rows`` labeled events and is then **frozen**, so a
  vector written today and one written next month live in the same space. (A running
  scaler, or a projection learned online, would move under the vectors already stored.)

An analyst can read these vectors (a dimension is a feature, in standard deviations), and
they need no training beyond the means and variances; a learned projection would be worth
its opacity only for far more features than a pipeline declares.

>>> from streams.catalog.fraud import FRAUD
>>> from dataclasses import replace
>>> from streams.declarations import EmbeddingPolicy
>>> spec = replace(FRAUD, embeddings=EmbeddingPolicy(features=("amount", "count_1m"),
...                                                  fit_rows=2))
>>> embedder = EventEmbedder(spec)
>>> embedder.fit_one({"amount": 10.0, "count_1m": 1.0})
False
>>> embedder.fit_one({"amount": 1000.0, "count_1m": 1.0})
True
>>> embedder.vector({"amount": 10.0, "count_1m": 1.0})
[-1.0, 0.0]
>>> embedder.fit_one({"amount": 5.0, "count_1m": 9.0})  # frozen: nothing changes
True
>>> embedder.vector({"amount": 10.0, "count_1m": 1.0})
[-1.0, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from river import preprocessing

from streams.declarations import EmbeddingPolicy, PipelineSpec


def policy_of(spec: PipelineSpec) -> EmbeddingPolicy:
    """The pipeline's embedding policy; a ValueError when it declares none."""
    if spec.embeddings is None:
        raise ValueError(f"pipeline {spec.name!r} declares no embeddings")
    return spec.embeddings


def compress(x: float) -> float:
    """``sign(x) * log1p(|x|)``: keeps order and sign, tames heavy tails."""
    return math.copysign(math.log1p(abs(x)), x)


class EventEmbedder:
    """A pipeline's features to vectors, the same in the worker, the API and replays."""

    def __init__(self, spec: PipelineSpec) -> None:
        policy = policy_of(spec)
        self.names: tuple[str, ...] = policy.features or spec.feature_names
        self.fit_rows = policy.fit_rows
        self.rows = 0
        self.scaler = preprocessing.StandardScaler()

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def frozen(self) -> bool:
        """Whether the scaler has learned all it will: vectors can be written."""
        return self.rows >= self.fit_rows

    def fit_one(self, features: Mapping[str, float]) -> bool:
        """Learn from one labeled event until frozen; return whether it is frozen now."""
        if not self.frozen:
            self.scaler.learn_one(self._compressed(features))
            self.rows += 1
        return self.frozen

    def vector(self, features: Mapping[str, float]) -> list[float]:
        scaled = self.scaler.transform_one(self._compressed(features))
        return [float(scaled[n]) for n in self.names]

    def _compressed(self, features: Mapping[str, float]) -> dict[str, float]:
        return {n: compress(float(features.get(n, 0.0))) for n in self.names}


@dataclass(frozen=True)
class Profile:
    """An entity as one vector: the time-decayed average of its labeled events' vectors.

    ``weight`` is the decayed count of events behind it, ``label`` the decayed mean label
    (the fraud rate, the mean price) and ``last_offset`` the training-topic offset of the
    newest event applied, so a replayed event is never counted twice.
    """

    vector: tuple[float, ...]
    weight: float
    label: float
    updated: float  # event time of the newest event applied
    events: int
    last_offset: int

    def add(self, vector: Sequence[float], label: float, event_time: float, offset: int,
            half_life: float) -> Profile:
        """This profile with one more event; unchanged when ``offset`` was applied already.

        Weights halve every ``half_life`` seconds of event time, counted back from the
        newest event (an out-of-order event enters with its own, smaller, weight).

        >>> p = Profile.first([0.0, 2.0], 1.0, event_time=100.0, offset=7)
        >>> q = p.add([2.0, 0.0], 0.0, event_time=110.0, offset=8, half_life=10.0)
        >>> [round(v, 3) for v in q.vector], round(q.weight, 3), round(q.label, 3), q.events
        ([1.333, 0.667], 1.5, 0.333, 2)
        >>> q.add([9.0, 9.0], 1.0, event_time=120.0, offset=8, half_life=10.0) is q
        True
        """
        if offset <= self.last_offset:
            return self
        age = event_time - self.updated
        decay = 0.5 ** (max(age, 0.0) / half_life)  # of what is there
        w = 0.5 ** (max(-age, 0.0) / half_life)      # of the new event
        old = self.weight * decay
        weight = old + w
        vec = tuple((o * old + n * w) / weight for o, n in zip(self.vector, vector, strict=True))
        return Profile(vec, weight, (self.label * old + label * w) / weight,
                       max(self.updated, event_time), self.events + 1, offset)

    @classmethod
    def first(cls, vector: Sequence[float], label: float, event_time: float,
              offset: int) -> Profile:
        return cls(tuple(float(v) for v in vector), 1.0, float(label), event_time, 1, offset)


def neighbour_rate(labels: Sequence[float], default: float = 0.0) -> float:
    """The mean label of the nearest labeled neighbours (``default`` with none).

    >>> neighbour_rate([1.0, 0.0, 0.0, 1.0]), neighbour_rate([])
    (0.5, 0.0)
    """
    return math.fsum(labels) / len(labels) if labels else default
