"""What every synthetic stream emits: records in emission order, merged from a heap."""

from __future__ import annotations

import heapq
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
