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
``DRIFTLINE_VECTOR_FLUSH_SECONDS``).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from driftline.adapters.stores import EmbeddingStore, FeatureStore
from driftline.adapters.vectors import STORE_ERRORS, EmbeddingSpace
from driftline.errors import Invalid, NotFound, Unavailable
from monitoring import metrics
from monitoring.logs import entity_ref
from serving.bodies import read_body
from serving.handlers.common import keys_of, pipeline_of
from serving.keys import REDIS, SCORERS, SETTINGS, SPACES
from serving.routing import Answer, Context, RouteTable
from serving.schemas import Erased, SimilarCases, similar_query_model
from streams.declarations import PipelineSpec
from streams.schemas import InvalidRecord, parse

log = logging.getLogger(__name__)

ROUTES = RouteTable()
WARMING_UP = "embeddings are warming up"
ENTITY = {"name": "entity", "in": "path", "required": True, "description": "the entity's id",
          "schema": {"type": "string", "minLength": 1, "maxLength": 128}}


def _space_of(request: web.Request, pipeline: PipelineSpec) -> EmbeddingSpace:
    space = request.app[SPACES].get(pipeline.name)
    if space is None:
        raise NotFound(f"pipeline {pipeline.name!r} declares no embeddings",
                       fields={"pipeline": "declares no embeddings"})
    return space


@ROUTES.post("/v1/similar/{pipeline}", role="scorer", tag="embeddings",
             summary="The nearest labeled {pipeline} events, or entity profiles",
             description="Give an event (embedded as the embedding agent embeds it) or a "
                         "known entity (its profile); get the `k` nearest labeled events "
                         "(`kind: events`, optionally only positive or negative ones with "
                         "`label`) or entity profiles (`kind: entities`, for an entity only), "
                         "nearest first.",
             body=similar_query_model,
             answers=[Answer(200, "The neighbours, nearest first.", SimilarCases)],
             errors={404: "The entity has no profile (no labeled events).", 413: None,
                     422: None,
                     503: f"The embeddings are warming up (no frozen standardizer yet: the "
                          f"error says `{WARMING_UP}`), or the vector store is unavailable."},
             # routed for every pipeline, but a 404 for those without embeddings
             exists_for=lambda spec: spec.embeddings is not None)
async def similar_cases(request: web.Request) -> web.Response:
    pipeline = pipeline_of(request)
    space = _space_of(request, pipeline)
    try:
        model = similar_query_model(Context(request.app[SETTINGS], pipeline))
        query = parse(model, await read_body(request))
    except InvalidRecord as exc:
        raise Invalid(exc.fields, "invalid query") from None
    event = query.event
    if event is not None and query.kind == "entities":
        raise Invalid({"kind": "an event is compared with events; ask with an entity for "
                               "entities"}, "invalid query")
    try:
        embedder = await space.embedder()
        if embedder is None:
            raise Unavailable(f"{WARMING_UP}: the standardizer has not seen "
                              f"{space.policy.fit_rows} labeled events yet")
        if event is not None:
            _, state = await FeatureStore(request.app[REDIS], keys_of(request, pipeline.name)
                                          ).get(pipeline.entity_of(event))
            engine = request.app[SCORERS][pipeline.name].engine
            vector = embedder.vector(engine.features_for(state, event))
            hits = await space.store.search_events(vector, query.k, label=query.label)
            about = {"event_id": pipeline.event_id_of(event),
                     "entity": pipeline.entity_of(event)}
        else:
            profile = await space.store.profile(query.entity)
            if profile is None:
                raise NotFound(f"no profile for entity {query.entity!r}",
                               fields={"entity": "has no labeled events"})
            vector, about = list(profile.vector), {"entity": query.entity}
            if query.kind == "entities":
                hits = await space.store.search_entities(vector, query.k, exclude=query.entity)
            else:
                hits = await space.store.search_events(vector, query.k, label=query.label,
                                                       exclude_entity=query.entity)
    except STORE_ERRORS as exc:  # Milvus (or Redis) is down: not the caller's fault
        log.warning("similar-case search failed", exc_info=True)
        raise Unavailable(f"vector store unavailable: {exc}") from exc
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


@ROUTES.delete("/v1/entities/{pipeline}/{entity}", role="admin", tag="embeddings",
               summary="Erase a {pipeline} entity: its features, window state and vectors",
               description="The erasure is recorded first, so that the worker neither "
                           "rebuilds the erased history nor writes its vectors again. "
                           "Erasing again is safe.",
               parameters=(ENTITY,),
               answers=[Answer(200, "Erased (counts are 0 for an unknown entity).", Erased)],
               errors={422: "The entity id is longer than 128 characters.",
                       503: "A store is unavailable; nothing is lost by retrying."})
async def forget_entity(request: web.Request) -> web.Response:
    pipeline = pipeline_of(request)
    entity = request.match_info["entity"]
    if len(entity) > 128:
        raise Invalid({"entity": "at most 128 characters"}, "invalid entity")
    # This process forgets the cached state now; the others within the cache's TTL.
    request.app[SCORERS][pipeline.name].evict(entity)
    redis, keys = request.app[REDIS], keys_of(request, pipeline.name)
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
        raise Unavailable(f"store unavailable, nothing is lost by retrying: {exc}") from exc
    metrics.ENTITIES_FORGOTTEN.labels(pipeline=pipeline.name).inc()
    log.info("erased %s entity %s: %s", pipeline.name, entity_ref(entity), deleted)
    return web.json_response({"pipeline": pipeline.name, "entity": entity,
                              "deleted": deleted, "erased_until": until})
