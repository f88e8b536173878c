"""The registry of declared pipelines, by name.

>>> sorted(PIPELINES)
['agrawal', 'fraud', 'fraud_knn', 'pricing']
>>> PIPELINES["pricing"].task
'regression'
"""

from __future__ import annotations

from streams.catalog.agrawal import AGRAWAL
from streams.catalog.fraud import FRAUD, FRAUD_KNN
from streams.catalog.pricing import PRICING
from streams.declarations import PipelineSpec

PIPELINES: dict[str, PipelineSpec] = {p.name: p for p in (AGRAWAL, FRAUD, FRAUD_KNN, PRICING)}
