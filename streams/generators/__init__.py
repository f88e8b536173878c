"""Synthetic streams for demos, tests and benchmarks, one per shipped pipeline.

>>> sorted(GENERATORS)
['fraud', 'pricing']
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from streams.generators.base import Emission
from streams.generators.fraud import FraudGenerator, FraudStreamConfig
from streams.generators.pricing import PricingGenerator, PricingStreamConfig

GENERATORS: dict[str, tuple[type, Any]] = {
    "fraud": (FraudGenerator, FraudStreamConfig()),
    "pricing": (PricingGenerator, PricingStreamConfig()),
}


def generate(name: str, **overrides: Any) -> tuple[Any, Iterator[Emission]]:
    """The config and the emissions of generator ``name`` with ``overrides`` applied."""
    cls, default = GENERATORS[name]
    config = replace(default, **overrides)
    return config, cls(config).emissions()
