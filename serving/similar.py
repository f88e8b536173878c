"""Similar-case search and the right to be forgotten, over a pipeline's Milvus vectors.

``POST /v1/similar/{pipeline}`` answers an analyst's "which past frauds look like this
one?": an event (its features computed as scoring would, then embedded as the embedding
agent embeds) or a known entity (its profile vector) in; the ``k`` nearest labeled events,
or entity profiles, out, nearest first, with their labels, distances and event times.

``DELETE /v1/entities/{pipeline}/{entity}`` erases an entity: it records the erasure
first (so the worker neither rebuilds the erased history nor writes its vectors again),
then deletes its features and window state in Redis and its event vectors and profile in
Milvus. A batch the embedding agent was writing at that moment may land after these
deletes; the agent erases the entity's vectors again on its next round (within
``DRIFTLINE_VECTOR_FLUSH_SECONDS``). (It will need the admin role once the API has
authentication.)
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from aiohttp import web
from pydantic import Field, model_validator

from driftline.adapters.stores import EmbeddingStore, FeatureStore, RedisKeys
from driftline.adapters.vectors import STORE_ERRORS, EmbeddingSpace
from monitoring import metrics as m
from monitoring.logs import entity_ref
from serving.bodies import read_body
from serving.errors import error
from streams.declarations import PipelineSpec
from streams.schemas import InvalidRecord, Record, parse

log = logging.getLogger(__name__)

SPACES = web.AppKey("spaces", dict)


class SimilarQuery(Record):
    """The body of a similar-case query: exactly one of ``event`` and ``entity``."""

    event: dict[str, Any] | None = None
    entity: str | None = Field(default=None, min_length=1, max_length=128)
    k: int = Field(default=10, ge=1, le=100)
    kind: Literal["events", "entities"] = "events"
    label: bool | None = None  # events only: keep only positive (or negative) cases

    @model_validator(mode="after")
    def _one_query(self) -> SimilarQuery:
        if (self.event is None) == (self.entity is None):
            raise ValueError("give exactly one of 'event' and 'entity'")
        return self


def _space_or_404(request: web.Request, pipeline: PipelineSpec) -> EmbeddingSpace:
    space = request.app[SPACES].get(pipeline.name)
    if space is None:
        exc = web.HTTPNotFound(reason=f"pipeline {pipeline.name!r} declares no embeddings")
        exc.fields = {"pipeline": "declares no embeddings"}
        raise exc
    return space


async def similar(request: web.Request, pipeline: PipelineSpec, engine: Any, redis: Any,
                  keys: RedisKeys) -> web.Response:
    space = _space_or_404(request, pipeline)
    try:
        query = parse(SimilarQuery, await read_body(request))
    except InvalidRecord as exc:
        return error(422, "invalid query", exc.errors)
    try:
        event = parse(pipeline.event_type, query.event) if query.event is not None else None
    except InvalidRecord as exc:
        return error(422, "invalid event", {f"event.{k}": v for k, v in exc.errors.items()})
    if event is not None and query.kind == "entities":
        return error(422, "invalid query", {"kind": "an event is compared with events; "
                                                    "ask with an entity for entities"})
    try:
        embedder = await space.embedder()
        if embedder is None:
            return error(503, "embeddings are warming up: the standardizer has not seen "
                              f"{space.policy.fit_rows} labeled events yet")
        if event is not None:
            _, state = await FeatureStore(redis, keys).get(pipeline.entity_of(event))
            vector = embedder.vector(engine.features_for(state, event))
            hits = await space.store.search_events(vector, query.k, label=query.label)
            about = {"event_id": pipeline.event_id_of(event),
                     "entity": pipeline.entity_of(event)}
        else:
            profile = await space.store.profile(query.entity)
            if profile is None:
                return error(404, f"no profile for entity {query.entity!r}",
                             {"entity": "has no labeled events"})
            vector, about = list(profile.vector), {"entity": query.entity}
            if query.kind == "entities":
                hits = await space.store.search_entities(vector, query.k, exclude=query.entity)
            else:
                hits = await space.store.search_events(vector, query.k, label=query.label,
                                                       exclude_entity=query.entity)
    except STORE_ERRORS as exc:  # Milvus (or Redis) is down: not the caller's fault
        log.warning("similar-case search failed", exc_info=True)
        return error(503, f"vector store unavailable: {exc}")
    neighbours = [_event_hit(pipeline, h) if query.kind == "events" else _entity_hit(pipeline, h)
                  for h in hits]
    return web.json_response({"pipeline": pipeline.name, "kind": query.kind, "query": about,
                              "metric": space.policy.metric, "k": query.k,
                              "neighbours": neighbours})


def _label(pipeline: PipelineSpec, value: float) -> bool | float:
    return value >= 0.5 if pipeline.task == "binary" else value


def _event_hit(pipeline: PipelineSpec, h: dict[str, Any]) -> dict[str, Any]:
    return {"event_id": h["id"], "entity": h["entity"], "label": _label(pipeline, h["label"]),
            "distance": h["distance"], "event_time": h["event_time"], "score": h["score"],
            "model_version": h["model_version"]}


def _entity_hit(pipeline: PipelineSpec, h: dict[str, Any]) -> dict[str, Any]:
    # A profile's label is the decayed mean: a label rate for a classifier.
    return {"entity": h["id"], "distance": h["distance"],
            ("label_rate" if pipeline.task == "binary" else "mean_label"): h["label"],
            "events": h["events"], "updated": h["updated"]}


async def forget_entity(request: web.Request, pipeline: PipelineSpec, redis: Any,
                        keys: RedisKeys) -> web.Response:
    entity = request.match_info["entity"]
    if len(entity) > 128:
        return error(422, "invalid entity", {"entity": "at most 128 characters"})
    features = FeatureStore(redis, keys)
    space = request.app[SPACES].get(pipeline.name)
    deleted: dict[str, int] = {"features": 0, "event_vectors": 0, "entity_vectors": 0}
    try:
        _, state = await features.get(entity)
        until = state["newest"] if state and state.get("newest") is not None else None
        if space is not None:
            # Counted before the erasure is recorded: from then on, the embedding agent
            # erases them too. The newest erased event may be known to Milvus only.
            rows = await space.store.events_of(entity)
            profile = await space.store.profile(entity)
            deleted["event_vectors"], deleted["entity_vectors"] = len(rows), int(bool(profile))
            times = [r["event_time"] for r in rows] + ([profile.updated] if profile else [])
            until = max([t for t in (until, *times) if t is not None], default=until)
        if until is not None:
            # Recorded first: from now on the worker drops what is in flight for it.
            await EmbeddingStore(redis, keys).forget(entity, until)
        deleted["features"] = int(await features.delete(entity))
        if space is not None:
            await space.store.forget(entity, until)
    except STORE_ERRORS as exc:  # a store is down; erasing again is safe
        log.warning("erasing %s/%s failed", pipeline.name, entity_ref(entity), exc_info=True)
        return error(503, f"store unavailable, nothing is lost by retrying: {exc}")
    m.ENTITIES_FORGOTTEN.labels(pipeline.name).inc()
    log.info("erased %s entity %s: %s", pipeline.name, entity_ref(entity), deleted)
    return web.json_response({"pipeline": pipeline.name, "entity": entity,
                              "deleted": deleted, "erased_until": until})
