"""The API's request and response bodies as pydantic models: what handlers validate with and
what the OpenAPI document (:mod:`serving.openapi`) is generated from.

Bodies that depend on a pipeline (its event, its features) are made per pipeline by a
function of the route's :class:`~serving.routing.Context`, once per pipeline and limit.

>>> from driftline.adapters.config import Settings
>>> from serving.routing import Context
>>> from streams.pipelines import PIPELINES
>>> score = score_model(Context(Settings(), PIPELINES["fraud"]))
>>> score.__name__, "probability" in score.model_fields
('Score_fraud', True)
>>> score is score_model(Context(Settings(), PIPELINES["fraud"]))
True
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, create_model, model_validator

from serving.routing import Context
from serving.traffic import TrafficSplit
from streams.schemas import Record

Variant = Literal["champion", "challenger", "fallback"]


def component_id(name: str) -> str:
    """A pipeline name as it may appear in a component or operation id."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _per_pipeline(make: Callable[[Context], type[BaseModel]]) -> Callable[[Context], Any]:
    """Cache ``make`` by the pipeline and the settings (models are made once each)."""
    made: dict[tuple[str, Any], type[BaseModel]] = {}

    def model_for(ctx: Context) -> type[BaseModel]:
        key = (ctx.name, ctx.settings)
        if key not in made:
            made[key] = make(ctx)
        return made[key]
    model_for.__name__ = make.__name__
    model_for.__doc__ = make.__doc__
    return model_for


# ---- errors ------------------------------------------------------------------------------

class Error(BaseModel):
    """Every error of the API."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="what went wrong")
    fields: dict[str, str] = Field(description="each bad field (dotted path, `$` for the "
                                               "whole body) and why")


# ---- scores ------------------------------------------------------------------------------

@_per_pipeline
def score_model(ctx: Context) -> type[BaseModel]:
    """A score of the context's pipeline, as :func:`serving.handlers.scores.score_body`
    writes it: its features by name, the probability for a binary task."""
    spec = ctx.spec
    feature = Literal[tuple(spec.model_feature_names)]  # type: ignore[misc, valid-type]
    binary = spec.task == "binary"
    contribution = create_model(
        f"Contribution_{component_id(spec.name)}", __config__=ConfigDict(extra="forbid"),
        feature=(feature, ...), value=(float, ...),
        contribution=(float, Field(description="score with the feature minus score "
                                               "without it")))
    fields: dict[str, Any] = {
        "pipeline": (Literal[spec.name], ...),  # type: ignore[valid-type]
        "event_id": (str, ...),
        "entity": (str, ...),
        "prediction": (float, Field(description="a probability" if binary
                                    else "the predicted value")),
        "model_version": (str, ...),
        "variant": (Variant, ...),
        "degraded": (bool, Field(description="the fallback model answered (features or "
                                             "model late)")),
        "degraded_reason": (str, Field(default=None, description="only when degraded")),
        "contributions": (list[contribution], Field(  # type: ignore[valid-type]
            max_length=max(ctx.settings.api_explain_top, 0),
            description="the features that moved the score most, largest first")),
        "features": (dict[feature, float], Field(  # type: ignore[valid-type]
            description="the features the model was given")),
        "entity_known": (bool | None, Field(description="whether the entity has stored "
                                                        "state (null: unknown, the state "
                                                        "could not be read)")),
    }
    if binary:
        fields["probability"] = (float, Field(ge=0, le=1, description="the prediction "
                                                                      "(binary pipelines)"))
    return create_model(
        f"Score_{component_id(spec.name)}",
        __config__=ConfigDict(extra="forbid", json_schema_extra={
            "description": f"A {spec.name} score ({spec.task}).",
            # degraded_reason comes with degraded scores only.
            "if": {"required": ["degraded"], "properties": {"degraded": {"const": True}}},
            "then": {"required": ["degraded_reason"]},
            "else": {"not": {"required": ["degraded_reason"]}}}),
        **fields)


@_per_pipeline
def batch_request_model(ctx: Context) -> type[BaseModel]:
    """Up to ``DRIFTLINE_API_BATCH_MAX`` events of the pipeline."""
    return create_model(
        f"ScoreBatch_{component_id(ctx.name)}",
        events=(list[ctx.spec.event_type], Field(  # type: ignore[name-defined]
            min_length=1, max_length=ctx.settings.api_batch_max)))


@_per_pipeline
def batch_answer_model(ctx: Context) -> type[BaseModel]:
    """The scores of a batch, in the order of its events."""
    return create_model(
        f"BatchScores_{component_id(ctx.name)}", __config__=ConfigDict(extra="forbid"),
        pipeline=(Literal[ctx.name], ...),  # type: ignore[valid-type]
        degraded=(bool, Field(description="whether any of the scores is degraded")),
        results=(list[score_model(ctx)], Field(  # type: ignore[misc]
            min_length=1, max_length=ctx.settings.api_batch_max)))


def event_model(ctx: Context) -> type[BaseModel]:
    return ctx.spec.event_type


# ---- models: status and admin actions ------------------------------------------------------

class PromoteRequest(BaseModel):
    """The body of a promotion."""

    version: StrictInt = Field(ge=1, lt=2**31, description="the registry version to serve")


class LineageBody(BaseModel):
    model_config = ConfigDict(title="Lineage")

    reason: str
    evidence: dict[str, Any]
    spec: str
    declaration: dict[str, Any]
    topic: str
    start_offset: int | None
    end_offset: int | None
    start_time: float | None
    end_time: float | None
    examples: int
    parent: int | None


class ModelVersionBody(BaseModel):
    """A registry version with its lineage and hold-out metrics."""

    model_config = ConfigDict(title="ModelVersion")

    pipeline: str
    version: int
    lineage: LineageBody
    metrics: dict[str, float]
    created_at: float
    champion: bool


class Swap(BaseModel):
    """A champion swap, requested: the learner swaps it in, every API process serves it
    within ``DRIFTLINE_MODEL_REFRESH_SECONDS``."""

    champion: ModelVersionBody
    swap: Literal["requested"]


class RetrainRequested(BaseModel):
    pipeline: str
    retrain: Literal["requested"]


class TrafficAnswer(BaseModel):
    """A pipeline's traffic split (null: the champion serves everything)."""

    pipeline: str
    traffic: TrafficSplit | None


class Serving(BaseModel):
    version: str | None
    published_at: float | str | None


class RegistryStatus(BaseModel):
    """The champion and every version, or the error when the registry is unavailable."""

    champion: int | None = None
    versions: list[ModelVersionBody] = []
    error: str | None = None


class ModelStatus(BaseModel):
    """What serves a pipeline, how recent versions did, the registry; its parts vary with
    what the learner has published."""

    pipeline: str
    task: str
    serving: Serving
    traffic: TrafficSplit | None
    learner: dict[str, str] = Field(description="the learner's version, revision, updates, "
                                                "...")
    prequential: dict[str, Any] = Field(description="rolling metrics of each recent version")
    feature_drift: dict[str, Any]
    registry: RegistryStatus


# ---- embeddings: similar cases, erasure ----------------------------------------------------

class SimilarQuery(Record):
    """The body of a similar-case query: exactly one of ``event`` and ``entity``; a
    pipeline's own (:func:`similar_query_model`) types its ``event``."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [  # the validator, for the schema
        {"required": ["event"], "properties": {"event": {"type": "object"}}},
        {"required": ["entity"], "properties": {"entity": {"type": "string"}}}]})

    event: dict[str, Any] | None = None
    entity: str | None = Field(default=None, min_length=1, max_length=128)
    k: int = Field(default=10, ge=1, le=100)
    kind: Literal["events", "entities"] = "events"
    label: bool | None = None  # events only: keep only positive (or negative) cases

    @model_validator(mode="before")
    @classmethod
    def _one_query(cls, data: Any) -> Any:
        # Before the fields: a query with both is refused as such, whatever its event.
        if isinstance(data, dict) and (data.get("event") is None) == (data.get("entity") is None):
            raise ValueError("give exactly one of 'event' and 'entity'")
        return data


@_per_pipeline
def similar_query_model(ctx: Context) -> type[BaseModel]:
    """:class:`SimilarQuery` whose ``event`` is the pipeline's own event."""
    return create_model(f"SimilarQuery_{component_id(ctx.name)}", __base__=SimilarQuery,
                        event=(ctx.spec.event_type | None, None))


class Neighbour(BaseModel):
    entity: str
    distance: float
    model_config = ConfigDict(extra="allow")


class SimilarCases(BaseModel):
    """The neighbours, nearest first."""

    pipeline: str
    kind: Literal["events", "entities"]
    query: dict[str, str]
    metric: str
    k: int
    neighbours: list[Neighbour]


class Deleted(BaseModel):
    features: int = Field(ge=0)
    event_vectors: int = Field(ge=0)
    entity_vectors: int = Field(ge=0)


class Erased(BaseModel):
    """What an erasure deleted (counts are 0 for an unknown entity)."""

    pipeline: str
    entity: str
    deleted: Deleted
    erased_until: float | None = Field(description="the newest event time erased")


# ---- service -------------------------------------------------------------------------------

class Health(BaseModel):
    """Liveness, and the model version each pipeline serves."""

    status: Literal["ok"]
    models: dict[str, str | None]
