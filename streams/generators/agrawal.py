"""River's Agrawal stream as loan applications with delayed decisions and an abrupt drift.

Each application's attributes are drawn by ``river.datasets.synth.Agrawal``; its class is
the one of classification function ``function_before`` for the first ``drift_at`` of the
stream and of ``function_after`` from then on (the concept changes, the attributes do not).
Two Agrawal generators with the same seed draw the same attributes (without class balancing
the class function consumes no randomness), so each application gets its class under both
functions and the switch is exact. Applications come from a few branches at Poisson times;
each decision is emitted ``label_delay`` seconds of event time later, plus up to 50% jitter.

>>> config = AgrawalStreamConfig(events=40, seed=1)
>>> stream = list(AgrawalGenerator(config).emissions())
>>> sum(e.kind == "event" for e in stream), sum(e.kind == "label" for e in stream)
(40, 40)
>>> gen = AgrawalGenerator(config)
>>> gen.function_of(19), gen.function_of(20)
(8, 0)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from river.datasets import synth

from streams.catalog.agrawal import LoanApplication, LoanOutcome
from streams.generators.base import Emission, EmissionQueue

# Agrawal's amounts (River gives an int 0 for no commission); the other attributes are ints.
MONEY = frozenset({"salary", "commission", "hvalue", "loan"})


@dataclass(frozen=True)
class AgrawalStreamConfig:
    events: int = 8_000
    # Of event time: with a 10 s label delay, a decision comes 100-150 applications later.
    events_per_second: float = 10.0
    sources: int = 5
    # Function 8 (disposable income) is what the champion learns; function 0 (an age band)
    # disagrees with it on half the applications and a fresh tree learns it fast.
    function_before: int = 8
    function_after: int = 0
    drift_at: float | None = 0.5     # fraction of the stream; None: no drift
    label_delay: float = 10.0        # seconds of event time, plus up to 50% jitter
    start_time: float = 1_767_225_600.0
    seed: int = 7
    run_id: str = "run"              # makes event ids unique across runs
    source_prefix: str = "branch"


class AgrawalGenerator:
    def __init__(self, config: AgrawalStreamConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self._queue = EmissionQueue()

    def drifted(self, i: int) -> bool:
        """Whether the i-th application is labeled by the concept after the drift."""
        return self.config.drift_at is not None and i >= self.config.drift_at * self.config.events

    def function_of(self, i: int) -> int:
        """The Agrawal classification function that labels the i-th application."""
        return self.config.function_after if self.drifted(i) else self.config.function_before

    def emissions(self) -> Iterator[Emission]:
        """Applications and decisions, merged in emission order."""
        r = self.rng
        now = self.config.start_time
        config = self.config
        before = synth.Agrawal(classification_function=config.function_before, seed=config.seed)
        after = synth.Agrawal(classification_function=config.function_after, seed=config.seed)
        pairs = islice(zip(before, after, strict=False), self.config.events)
        for i, ((x, y_before), (_, y_after)) in enumerate(pairs):
            now += r.expovariate(self.config.events_per_second)
            yield from self._queue.until(now)
            source = f"{self.config.source_prefix}-{r.randrange(self.config.sources)}"
            y = y_after if self.drifted(i) else y_before
            event_id = f"{self.config.run_id}-{i:07d}"
            self._queue.push(now, "event", source, LoanApplication(
                event_id=event_id, source=source, ts=round(now, 3),
                **{k: round(float(v), 2) if k in MONEY else int(v) for k, v in x.items()}))
            label_at = now + self.config.label_delay * (1 + 0.5 * r.random())
            self._queue.push(label_at, "label", event_id, LoanOutcome(
                event_id=event_id, approved=bool(y), ts=round(label_at, 3)))
        yield from self._queue.drain()
