"""Data sets bundled with River, replayed in their own order as events with delayed labels.

One generator for every bundled data set a pipeline is declared for (:data:`DATASETS`):
the i-th example becomes the i-th event, from a source drawn at random, at Poisson times
of ``events_per_second`` (the seed draws both: the data set is the data set); its label
follows exactly ``label_delay`` seconds of event time later. Field names come from the
pipeline's declaration, River's feature names renamed where they are no Python names. A
config asking for more events than the data set has gets the data set.

>>> config = RiverDatasetConfig(dataset="phishing", events=40, seed=1, label_delay=2.0)
>>> stream = list(RiverDatasetGenerator(config).emissions())
>>> sum(e.kind == "event" for e in stream), sum(e.kind == "label" for e in stream)
(40, 40)
>>> event, label = (next(e for e in stream if e.kind == kind) for kind in ("event", "label"))
>>> label.record.event_id == event.record.event_id, round(label.at - event.at, 6)
(True, 2.0)
>>> label.record.is_phishing, event.record.age_of_domain
(True, 1.0)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from river import datasets

from streams.catalog.bananas import BANANAS
from streams.catalog.phishing import PHISHING
from streams.declarations import PipelineSpec
from streams.generators.base import Emission, EmissionQueue


@dataclass(frozen=True)
class RiverDataset:
    """A bundled data set and the pipeline whose events its examples become."""

    load: Callable[[], Iterable[tuple[dict, bool | float]]]
    spec: PipelineSpec
    renamed: tuple[tuple[str, str], ...] = ()  # (River's feature name, the event's field)


DATASETS: dict[str, RiverDataset] = {
    "bananas": RiverDataset(datasets.Bananas, BANANAS, renamed=(("1", "x"), ("2", "y"))),
    "phishing": RiverDataset(datasets.Phishing, PHISHING),
}


@dataclass(frozen=True)
class RiverDatasetConfig:
    dataset: str = "phishing"        # a key of DATASETS
    events: int = 1_250              # at most the data set's size
    events_per_second: float = 10.0  # of event time, on average
    label_delay: float = 2.0         # seconds of event time, exactly: about 20 events later
    sources: int = 5
    start_time: float = 1_767_225_600.0
    seed: int = 7
    run_id: str = "run"              # makes event ids unique across runs
    source_prefix: str = "source"


class RiverDatasetGenerator:
    def __init__(self, config: RiverDatasetConfig) -> None:
        self.config = config
        self.dataset = DATASETS[config.dataset]
        self.rng = random.Random(config.seed)
        self._queue = EmissionQueue()

    def emissions(self) -> Iterator[Emission]:
        """Events and labels, merged in emission order."""
        r = self.rng
        spec, renamed = self.dataset.spec, dict(self.dataset.renamed)
        now = self.config.start_time
        for i, (x, y) in enumerate(islice(self.dataset.load(), self.config.events)):
            now += r.expovariate(self.config.events_per_second)
            yield from self._queue.until(now)
            source = f"{self.config.source_prefix}-{r.randrange(self.config.sources)}"
            event_id = f"{self.config.run_id}-{i:07d}"
            self._queue.push(now, "event", source, spec.event_type(**{
                spec.event_id_field: event_id, spec.entity_field: source,
                spec.time_field: round(now, 3),
                **{renamed.get(k, k): float(v) for k, v in x.items()}}))
            label_at = now + self.config.label_delay
            self._queue.push(label_at, "label", event_id, spec.label_type(**{
                spec.event_id_field: event_id, spec.label_field: y,
                spec.label_time_field: round(label_at, 3)}))
        yield from self._queue.drain()
