"""What every synthetic stream emits: records in emission order, merged from a heap."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from streams.schemas import Record


@dataclass(order=True)
class Emission:
    """One record to send, at its emission time (event time for events)."""

    at: float
    seq: int
    kind: Literal["event", "label"] = field(compare=False)
    key: str = field(compare=False)
    record: Record = field(compare=False)


class EmissionQueue:
    """Records scheduled for later (labels, the rest of a burst), released in time order."""

    def __init__(self) -> None:
        self._heap: list[Emission] = []
        self._seq = 0

    def push(self, at: float, kind: Literal["event", "label"], key: str, record: Record) -> None:
        self._seq += 1
        heapq.heappush(self._heap, Emission(at, self._seq, kind, key, record))

    def until(self, now: float) -> Iterator[Emission]:
        while self._heap and self._heap[0].at <= now:
            yield heapq.heappop(self._heap)

    def drain(self) -> Iterator[Emission]:
        while self._heap:
            yield heapq.heappop(self._heap)


def disorder(emissions: Iterator[Emission], fraction: float, max_delay: float,
             seed: int = 0) -> list[Emission]:
    """Hold back a ``fraction`` of the events by up to ``max_delay`` seconds, so that they
    arrive after later events of their entity (out of order, and some beyond any allowed
    lateness). Labels keep their times.

    >>> from streams.schemas import Record
    >>> class E(Record):
    ...     ts: float
    >>> out = disorder(iter([Emission(float(i), i, "event", "k", E(ts=float(i)))
    ...                      for i in range(1, 100)]), 0.2, 10.0, seed=1)
    >>> [e.at for e in out] == sorted(e.at for e in out)
    True
    >>> any(e.record.ts > f.record.ts for e, f in zip(out, out[1:]))
    True
    """
    rng = random.Random(seed)
    held = []
    for e in emissions:
        if e.kind == "event" and rng.random() < fraction:
            e = Emission(e.at + rng.uniform(0, max_delay), e.seq, e.kind, e.key, e.record)
        held.append(e)
    return sorted(held)
