"""Pipeline declarations: what flows in, what an entity is, and how features are made.

The agents and the API are written against :class:`PipelineDef`, never against one
pipeline, so a new feed is a new declaration here (and a model spec in
``online_models.spec``).

>>> PIPELINES["fraud"].entity_of(PIPELINES["fraud"].event_type(
...     event_id="e", card_id="c7", merchant_id="m", amount=1.0, ts=1.0))
'c7'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams import features as fraud_features
from streams.schemas import Label, Record, Transaction


@dataclass(frozen=True)
class PipelineDef:
    name: str
    event_type: type[Record]
    label_type: type[Label]
    entity_field: str
    time_field: str
    label_field: str
    # (entity state or None, event) -> (new state, features of the event)
    observe: Callable[[dict[str, Any] | None, Any], tuple[dict[str, Any], dict[str, float]]]
    feature_names: tuple[str, ...]

    def entity_of(self, event: Record) -> str:
        return str(getattr(event, self.entity_field))

    def time_of(self, event: Record) -> float:
        return float(getattr(event, self.time_field))

    def label_of(self, label: Label) -> bool:
        return bool(getattr(label, self.label_field))


FRAUD = PipelineDef(
    name="fraud",
    event_type=Transaction,
    label_type=Label,
    entity_field="card_id",
    time_field="ts",
    label_field="is_fraud",
    observe=fraud_features.observe,
    feature_names=fraud_features.FEATURE_NAMES,
)

PIPELINES: dict[str, PipelineDef] = {p.name: p for p in (FRAUD,)}
