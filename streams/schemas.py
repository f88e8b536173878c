"""Typed contracts for every record that crosses a process boundary.

Inputs from users' producers (:class:`Transaction`, :class:`Label`) are validated
strictly: a wrong type is an error, never a silent coercion. :func:`parse` turns any
validation failure into :class:`InvalidRecord`, which names each bad field and why.

>>> parse(Transaction, b'{"event_id": "e1", "card_id": "c1", "merchant_id": "m1",'
...                    b' "amount": "12", "ts": 1.0}')
Traceback (most recent call last):
...
streams.schemas.InvalidRecord: amount: Input should be a valid number
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Record(BaseModel):
    """Base of all contracts: immutable, strict, unknown fields ignored."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class Transaction(Record):
    """A card payment, the event of the fraud pipeline (keyed by ``card_id``)."""

    event_id: str = Field(min_length=1, max_length=128)
    card_id: str = Field(min_length=1, max_length=128)
    merchant_id: str = Field(min_length=1, max_length=128)
    amount: float = Field(gt=0, lt=1e9, allow_inf_nan=False)
    ts: float = Field(gt=0, allow_inf_nan=False, description="event time, epoch seconds")
    currency: str = Field(default="EUR", min_length=3, max_length=3)


class Label(Record):
    """The outcome of a transaction, known later (keyed by ``event_id``)."""

    event_id: str = Field(min_length=1, max_length=128)
    is_fraud: bool
    ts: float = Field(gt=0, allow_inf_nan=False, description="when the label became known")


class Prediction(Record):
    """What the worker said about an event, before any label existed."""

    event_id: str
    entity: str
    event_time: float
    score: float
    model_version: str
    scored_at: float


class Snapshot(Record):
    """The features an event was scored with, kept until its label arrives."""

    event_id: str
    entity: str
    event_time: float
    features: dict[str, float]
    score: float
    model_version: str


class TrainingExample(Record):
    """A snapshot joined with its label: exactly what the learner learns from."""

    event_id: str
    entity: str
    event_time: float
    features: dict[str, float]
    score: float
    model_version: str
    label: bool
    label_time: float


class DeadLetter(Record):
    """A record that could not be processed, with the reason and the original bytes."""

    source_topic: str
    partition: int
    offset: int
    key: str | None
    value: str  # the original bytes, decoded as UTF-8 with replacement
    error: str
    fields: list[str]
    at: float


class InvalidRecord(ValueError):
    """A record failed validation; ``errors`` maps each bad field to its reason."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


R = TypeVar("R", bound=Record)


def parse(model: type[R], raw: bytes | str | dict[str, Any]) -> R:
    """Validate ``raw`` (JSON bytes, text or an already decoded object) as ``model``."""
    try:
        if isinstance(raw, dict):
            return model.model_validate(raw)
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRecord({"$": f"not valid JSON ({exc})"}) from None
    except ValidationError as exc:
        raise InvalidRecord(_field_errors(exc)) from None
    if not isinstance(data, dict):
        raise InvalidRecord({"$": f"expected a JSON object, got {type(data).__name__}"})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRecord(_field_errors(exc)) from None


def _field_errors(exc: ValidationError) -> dict[str, str]:
    errors: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        name = ".".join(str(p) for p in err["loc"]) or "$"
        errors.setdefault(name, err["msg"])
    return errors
