"""The registry of declared pipelines, by name.

>>> sorted(PIPELINES)
['agrawal', 'bananas', 'fraud', 'fraud_knn', 'phishing', 'pricing']
>>> PIPELINES["pricing"].task
'regression'
"""

from __future__ import annotations

from streams.catalog.agrawal import AGRAWAL
from streams.catalog.bananas import BANANAS
from streams.catalog.fraud import FRAUD, FRAUD_KNN
from streams.catalog.phishing import PHISHING
from streams.catalog.pricing import PRICING
from streams.declarations import PipelineSpec

PIPELINES: dict[str, PipelineSpec] = {
    p.name: p for p in (AGRAWAL, BANANAS, FRAUD, FRAUD_KNN, PHISHING, PRICING)}
