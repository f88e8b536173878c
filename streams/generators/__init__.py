"""Synthetic streams for demos, tests and benchmarks, one per shipped pipeline.

>>> sorted(GENERATORS)
['agrawal', 'bananas', 'fraud', 'phishing', 'pricing']
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from streams.generators.agrawal import AgrawalGenerator, AgrawalStreamConfig
from streams.generators.base import Emission
from streams.generators.fraud import FraudGenerator, FraudStreamConfig
from streams.generators.pricing import PricingGenerator, PricingStreamConfig
from streams.generators.river_datasets import RiverDatasetConfig, RiverDatasetGenerator

GENERATORS: dict[str, tuple[type, Any]] = {
    "agrawal": (AgrawalGenerator, AgrawalStreamConfig()),
    "bananas": (RiverDatasetGenerator, RiverDatasetConfig(dataset="bananas", events=5_300)),
    "fraud": (FraudGenerator, FraudStreamConfig()),
    "phishing": (RiverDatasetGenerator, RiverDatasetConfig(dataset="phishing")),
    "pricing": (PricingGenerator, PricingStreamConfig()),
}


def generate(name: str, **overrides: Any) -> tuple[Any, Iterator[Emission]]:
    """The config and the emissions of generator ``name`` with ``overrides`` applied."""
    cls, default = GENERATORS[name]
    config = replace(default, **overrides)
    return config, cls(config).emissions()


def generate_history(name: str, events: int, now: float,
                     **overrides: Any) -> tuple[Any, Iterator[Emission]]:
    """A stream of ``events`` that ends at ``now``, at the generator's own event-time rate:
    history to replay faster than it happened (``rate / config.events_per_second`` times).

    >>> config, _ = generate_history("fraud", events=100, now=1_000.0)
    >>> config.start_time + config.events / config.events_per_second
    1000.0
    """
    eps = overrides.get("events_per_second", GENERATORS[name][1].events_per_second)
    return generate(name, events=events, start_time=now - events / eps, **overrides)


def pipeline_history(spec: Any, events: int, now: float,
                     **overrides: Any) -> tuple[Any, Iterator[Emission]]:
    """:func:`generate_history` of the generator a pipeline declares (several pipelines
    may share one, as ``fraud`` and ``fraud_knn`` do)."""
    if spec.generator is None:
        raise ValueError(f"pipeline {spec.name!r} declares no generator")
    return generate_history(spec.generator, events, now, **overrides)
