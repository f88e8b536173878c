"""Typed contracts for every record that crosses a process boundary.

Inputs from users' producers (:class:`Transaction`, :class:`Label`) are validated
strictly: a wrong type is an error, never a silent coercion. :func:`parse` turns any
validation failure into :class:`InvalidRecord`, which names each bad field and why.

>>> class Ping(Record):
...     at: float
>>> parse(Ping, b'{"at": "12"}')
Traceback (most recent call last):
...
streams.schemas.InvalidRecord: at: Input should be a valid number
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from driftline.errors import Invalid


class Record(BaseModel):
    """Base of all contracts: immutable, strict, unknown fields ignored. A field may carry
    its JSON name as an alias (``Field(alias="amount-eur")``): records are read and written
    with it, and features and declarations name the field by it."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore",
                              validate_by_alias=True, validate_by_name=True,
                              serialize_by_alias=True)

    def to_json(self) -> bytes:
        # What model_dump_json() gives, as bytes (not decoded to str and encoded back).
        return self.__pydantic_serializer__.to_json(self)


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
    score: float  # a probability (binary task) or a predicted value (regression)
    model_version: str


class TrainingExample(Record):
    """A snapshot joined with its label: exactly what the learner learns from, and the
    point-in-time training log (``<pipeline>.training``) that retraining reads back."""

    event_id: str
    entity: str
    event_time: float
    features: dict[str, float]
    score: float
    model_version: str
    label: bool | float
    label_time: float


class ControlEvent(Record):
    """One step of a model's life, on ``<pipeline>.control``: a drift detection with its
    evidence, a retrain request, a retrain's outcome, a promotion or a rollback, a model
    found unhealthy (scoring non-finite) and rolled back to the learner's checkpoint."""

    kind: Literal["concept_drift", "feature_drift", "retrain_requested", "retrain_skipped",
                  "retrain_rejected", "promoted", "model_unhealthy"]
    pipeline: str
    at: float
    model_version: str = ""            # the version serving when it happened
    offset: int | None = None          # the training-topic offset it refers to
    registry_version: int | None = None  # for a promotion: the version to serve
    reason: str = ""                   # "drift", "manual", "rollback", "cooldown", ...
    evidence: dict[str, Any] = {}


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


class InvalidRecord(Invalid):
    """A record failed validation; ``errors`` (``fields``) maps each bad field to its
    reason."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(errors)
        self.errors = self.fields


R = TypeVar("R", bound=Record)


def parse(model: type[R], raw: bytes | str | dict[str, Any]) -> R:
    """Validate ``raw`` (JSON bytes, text or an already decoded object) as ``model``."""
    try:
        if isinstance(raw, dict):
            return model.model_validate(raw)
        # Pydantic's own parser validates JSON as it reads it (several times faster than
        # decoding first); a record it refuses is read again below, for the same errors
        # (and wording) whichever way it came.
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if isinstance(raw, dict):
            raise InvalidRecord(field_errors(exc)) from None
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise InvalidRecord({"$": f"expected a JSON object, got {type(data).__name__}"})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRecord(field_errors(exc)) from None


def decode_json(raw: bytes | str) -> Any:
    """``raw`` decoded; :class:`InvalidRecord` when it is not JSON (or nests too deep for
    the decoder, which would otherwise raise RecursionError, or holds an integer too long
    for Python to convert, a ValueError).

    >>> decode_json(b"[" * 100_000)
    Traceback (most recent call last):
    ...
    streams.schemas.InvalidRecord: $: not valid JSON (nested too deep)
    >>> decode_json(b"1" * 5000)
    Traceback (most recent call last):
    ...
    streams.schemas.InvalidRecord: $: not valid JSON (an integer of more than 4300 digits)
    """
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRecord({"$": f"not valid JSON ({exc})"}) from None
    except RecursionError:
        raise InvalidRecord({"$": "not valid JSON (nested too deep)"}) from None
    except ValueError:  # the only other one: int() past sys.get_int_max_str_digits()
        raise InvalidRecord({"$": f"not valid JSON (an integer of more than "
                                  f"{sys.get_int_max_str_digits()} digits)"}) from None


def field_errors(exc: ValidationError) -> dict[str, str]:
    """Each bad field of a validation error (dotted path, ``$`` for the whole), and why."""
    errors: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        name = ".".join(str(p) for p in err["loc"]) or "$"
        errors.setdefault(name, err["msg"])
    return errors
