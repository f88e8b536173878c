"""The Milvus adapter: a pipeline's two collections, and every read and write of them.

* ``<prefix>_events``: one row per labeled event, keyed by event id: its vector
  (:class:`streams.embeddings.EventEmbedder`), label, entity, event time, served score and
  model version, and its offset in the training topic;
* ``<prefix>_entities``: one row per entity, keyed by entity id: its time-decayed
  :class:`~streams.embeddings.Profile`.

Every process reaches Milvus by ``settings.milvus_uri``: the Milvus Lite server that
``driftline stack up`` starts (a Milvus Lite file admits one opener only, so no process
opens the file itself), or a Milvus server. Writes are upserts keyed by id, so replaying
a batch after a crash changes nothing.

Collections are made with the blocking client: Milvus Lite's server lacks the
``AllocTimestamp`` call that the asyncio client's ``create_index`` waits with. Everything
else uses :class:`pymilvus.AsyncMilvusClient`, inside the caller's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from pymilvus import AsyncMilvusClient, DataType, MilvusClient
from pymilvus.exceptions import ErrorCode, MilvusException
from redis.exceptions import RedisError

from driftline.adapters.config import Settings
from driftline.adapters.stores import EmbeddingStore
from monitoring import metrics
from streams.declarations import PipelineSpec
from streams.embeddings import EventEmbedder, Profile, neighbour_rate, policy_of

log = logging.getLogger(__name__)

# pymilvus pings every 10 s even when idle; a gRPC server with default settings (Milvus
# Lite's) tolerates a ping every 5 minutes only and answers GOAWAY "too_many_pings", and
# the next call on that channel fails. Ping only during calls, at the server's pace. Every
# Milvus client of Driftline is made here, with these options.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": 0}

# Event and entity ids are at most 128 characters (the schemas say so); a Milvus server
# counts VARCHAR lengths in bytes, and a character is up to 4 bytes in UTF-8.
ID_LENGTH = 4 * 128
# What a store that does not answer raises: a caller's 503, not a bug's 500.
STORE_ERRORS = (MilvusException, grpc.RpcError, RedisError, TimeoutError, OSError)
# The scalar fields of each collection, beside its ``id`` and ``vector``.
EVENT_SCHEMA: dict[str, tuple[DataType, dict[str, Any]]] = {
    "entity": (DataType.VARCHAR, {"max_length": ID_LENGTH}),
    "label": (DataType.FLOAT, {}),
    "event_time": (DataType.DOUBLE, {}),
    "score": (DataType.FLOAT, {}),
    "model_version": (DataType.VARCHAR, {"max_length": 64}),
    "offset": (DataType.INT64, {}),
}
ENTITY_SCHEMA: dict[str, tuple[DataType, dict[str, Any]]] = {
    "label": (DataType.FLOAT, {}),
    "weight": (DataType.DOUBLE, {}),
    "updated": (DataType.DOUBLE, {}),
    "events": (DataType.INT64, {}),
    "last_offset": (DataType.INT64, {}),
}
EVENT_FIELDS = list(EVENT_SCHEMA)
ENTITY_FIELDS = list(ENTITY_SCHEMA)


def collection_prefix(settings: Settings) -> str:
    """``dl_<namespace>_``: Milvus names allow letters, digits and underscores only."""
    ns = re.sub(r"\W", "_", settings.namespace)
    return f"dl_{ns}_" if ns else "dl_"


def collection_names(settings: Settings, pipeline: str) -> tuple[str, str]:
    """The (events, entities) collections of ``pipeline``."""
    base = collection_prefix(settings) + re.sub(r"\W", "_", pipeline)
    return f"{base}_events", f"{base}_entities"


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quoted(value: str) -> str:
    r"""A string literal for a Milvus filter expression. Only the escapes Milvus knows are
    used; any other character, non-ASCII included, is passed through as it is.

    >>> print(quoted('card "7" \\ café'))
    "card \"7\" \\ café"
    """
    return '"' + "".join(_ESCAPES.get(c, c) for c in value) + '"'


def blocking_client(settings: Settings) -> MilvusClient:
    """A client with a connection of its own (``dedicated``): pymilvus otherwise shares one
    connection per address, with the options of whoever opened it first, and never closes
    it. Close it after use."""
    return MilvusClient(uri=settings.milvus_uri, grpc_options=GRPC_OPTIONS, dedicated=True,
                        timeout=settings.milvus_timeout_seconds)


def quoted_list(values: Iterable[str]) -> str:
    """A list literal of strings for a Milvus ``in`` filter.

    >>> print(quoted_list(["a", 'b"c']))
    ["a", "b\\"c"]
    """
    return "[" + ", ".join(quoted(v) for v in values) + "]"


def ensure_collections(settings: Settings, spec: PipelineSpec) -> None:
    """Create (and load) the pipeline's collections if missing, as it declares them."""
    policy = policy_of(spec)
    dim = EventEmbedder(spec).dim
    events, entities = collection_names(settings, spec.name)
    client = blocking_client(settings)
    try:
        for name, fields in ((events, EVENT_SCHEMA), (entities, ENTITY_SCHEMA)):
            if not client.has_collection(name):
                schema = MilvusClient.create_schema(auto_id=False)
                schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_LENGTH)
                for field, (dtype, params) in fields.items():
                    schema.add_field(field, dtype, **params)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
                index = MilvusClient.prepare_index_params()
                index.add_index("vector", index_type=policy.index, metric_type=policy.metric,
                                params=dict(policy.index_params))
                client.create_collection(name, schema=schema, index_params=index)
                log.info("created Milvus collection %s (dim %d, %s, %s)", name, dim,
                         policy.index, policy.metric)
            client.load_collection(name)
    finally:
        client.close()


def drop_namespace_collections(settings: Settings) -> int:
    """Drop the collections of every declared pipeline in ``settings.namespace`` (refuses
    the empty namespace); how many there were."""
    from streams.pipelines import PIPELINES

    if not settings.namespace:
        raise ValueError("refusing to drop collections without a namespace")
    client = blocking_client(settings)
    try:
        existing = set(client.list_collections())
        names = [n for p in PIPELINES for n in collection_names(settings, p) if n in existing]
        for name in names:
            client.drop_collection(name)
        return len(names)
    finally:
        client.close()


class VectorStore:
    """One pipeline's collections, through the asyncio client. Make it inside the loop."""

    def __init__(self, settings: Settings, spec: PipelineSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.policy = policy_of(spec)
        self.events, self.entities = collection_names(settings, spec.name)
        self.client = AsyncMilvusClient(uri=settings.milvus_uri, grpc_options=GRPC_OPTIONS,
                                        dedicated=True)
        self.timeout = settings.milvus_timeout_seconds  # per call: a hung call fails

    async def close(self) -> None:
        await self.client.close()

    # ---- writes (the embedding agent) ----------------------------------------------

    async def upsert_events(self, rows: list[dict[str, Any]]) -> None:
        """Rows with ``id``, ``vector`` and :data:`EVENT_FIELDS`."""
        await self._upsert(self.events, EVENT_SCHEMA, rows)

    async def _upsert(self, collection: str,
                      schema: Mapping[str, tuple[DataType, dict[str, Any]]],
                      rows: list[dict[str, Any]]) -> None:
        """Upsert ``rows`` as columns, through pymilvus's column path (its connection's
        ``upsert``; the client's takes rows only): packing rows cost about 30
        microseconds each, a tenth of a worker's time in its profile; by columns, 3."""
        if not rows:
            return
        types = {"id": DataType.VARCHAR, "vector": DataType.FLOAT_VECTOR,
                 **{field: dtype for field, (dtype, _) in schema.items()}}
        entities = [{"name": f, "type": t, "values": [r[f] for r in rows]}
                    for f, t in types.items()]
        conn = await self.client._get_connection()
        await conn.upsert(collection, entities, timeout=self.timeout)

    async def profiles(self, entities: Iterable[str]) -> dict[str, Profile]:
        """The stored profiles of ``entities`` (read strongly: they are about to change)."""
        ids = sorted(set(entities))
        if not ids:
            return {}
        # Not `get(ids=...)`: pymilvus writes the ids into a filter without escaping them.
        rows = await self._query(self.entities, filter=f"id in {quoted_list(ids)}",
                                 limit=len(ids), output_fields=["id", "vector", *ENTITY_FIELDS])
        return {r["id"]: _profile(r) for r in rows}

    async def upsert_profiles(self, profiles: Mapping[str, Profile]) -> None:
        rows = [{"id": entity, "vector": list(p.vector), "label": p.label, "weight": p.weight,
                 "updated": p.updated, "events": p.events, "last_offset": p.last_offset}
                for entity, p in profiles.items()]
        await self._upsert(self.entities, ENTITY_SCHEMA, rows)

    async def seal(self) -> None:
        """Flush both collections: written rows become indexed segments (see
        ``Settings.vector_seal_rows``)."""
        for name in (self.events, self.entities):
            await self.client.flush(name, timeout=self.timeout)

    async def events_of(self, entity: str, until: float | None = None
                        ) -> list[dict[str, Any]]:
        """The entity's event rows (id and event time), up to event time ``until``."""
        return await self._query(self.events, filter=_of_entity(entity, until),
                                 output_fields=["id", "event_time"])

    async def _query(self, collection: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Rows read strongly; none when the collection does not exist yet (the embedding
        agent creates it before its first write, so nothing was ever written)."""
        try:
            return await self.client.query(collection, consistency_level="Strong",
                                           timeout=self.timeout, **kwargs)
        except MilvusException as exc:
            if exc.code == ErrorCode.COLLECTION_NOT_FOUND:
                return []
            raise

    async def forget(self, entity: str, until: float | None = None) -> dict[str, int]:
        """Delete the entity's event vectors up to event time ``until`` (all without it),
        and its profile unless it has newer events; how many of each were deleted."""
        events = await self.events_of(entity, until)
        if events:
            await self.client.delete(self.events, filter=_of_entity(entity, until),
                                     timeout=self.timeout)
        profile = await self.profile(entity)
        gone = profile is not None and (until is None or profile.updated <= until)
        if gone:
            await self.client.delete(self.entities, filter=f"id == {quoted(entity)}",
                                     timeout=self.timeout)
        return {"events": len(events), "entities": int(gone)}

    # ---- reads (the API, the neighbour feature) ---------------------------------------

    async def profile(self, entity: str) -> Profile | None:
        return (await self.profiles([entity])).get(entity)

    async def search_events(self, vector: list[float], k: int, *, label: bool | None = None,
                            exclude_entity: str | None = None) -> list[dict[str, Any]]:
        """The ``k`` nearest labeled events, nearest first; optionally only those labeled
        positive (``label=True``) or negative, and not of ``exclude_entity``."""
        clauses = []
        if label is not None:
            clauses.append("label >= 0.5" if label else "label < 0.5")
        if exclude_entity is not None:
            clauses.append(f"entity != {quoted(exclude_entity)}")
        return (await self._search(self.events, [vector], k, " and ".join(clauses),
                                   EVENT_FIELDS))[0]

    async def search_events_many(self, vectors: list[list[float]], k: int
                                 ) -> list[list[dict[str, Any]]]:
        """The ``k`` nearest labeled events of each vector, in one call."""
        return await self._search(self.events, vectors, k, "", EVENT_FIELDS)

    async def search_entities(self, vector: list[float], k: int, *,
                              exclude: str | None = None) -> list[dict[str, Any]]:
        flt = f"id != {quoted(exclude)}" if exclude is not None else ""
        return (await self._search(self.entities, [vector], k, flt, ENTITY_FIELDS))[0]

    async def _search(self, collection: str, vectors: list[list[float]], k: int, flt: str,
                      fields: list[str]) -> list[list[dict[str, Any]]]:
        params = dict(self.policy.search_params)
        if "ef" in params:  # HNSW answers at most ef neighbours
            params["ef"] = max(params["ef"], k)
        hits = await self.client.search(
            collection, data=vectors, limit=k, filter=flt, output_fields=fields,
            search_params={"metric_type": self.policy.metric, "params": params},
            timeout=self.timeout)
        return [[{"id": h["id"], "distance": float(h["distance"]), **h["entity"]} for h in one]
                for one in hits]


def _of_entity(entity: str, until: float | None) -> str:
    flt = f"entity == {quoted(entity)}"
    return flt if until is None else f"{flt} and event_time <= {until!r}"


def _profile(row: Mapping[str, Any]) -> Profile:
    return Profile(tuple(float(v) for v in row["vector"]), float(row["weight"]),
                   float(row["label"]), float(row["updated"]), int(row["events"]),
                   int(row["last_offset"]))


class EmbeddingSpace:
    """What a scoring process needs of a pipeline's embeddings: the frozen embedder that
    the embedding agent publishes in Redis, and the collections. Worker and API compute
    the neighbour feature through this one class, so they compute it alike."""

    RECHECK_SECONDS = 1.0  # how often to look for the embedder while there is none

    def __init__(self, settings: Settings, spec: PipelineSpec, embeddings: EmbeddingStore,
                 process: str) -> None:
        self.spec = spec
        self.policy = policy_of(spec)
        self.store = VectorStore(settings, spec)
        self.embeddings = embeddings
        self.process = process
        self.timeout = settings.neighbour_timeout_seconds
        self._embedder: EventEmbedder | None = None
        self._checked = float("-inf")

    async def embedder(self) -> EventEmbedder | None:
        """The frozen embedder, None until the agent has published one. (Frozen: it never
        changes once there, so it is read once.)"""
        if self._embedder is None and time.monotonic() - self._checked >= self.RECHECK_SECONDS:
            self._checked = time.monotonic()
            self._embedder = await self.embeddings.embedder()
        return self._embedder

    async def add_neighbour_feature(self, features: dict[str, float],
                                    timeout: float | None = None) -> None:
        """:meth:`add_neighbour_features` of one event."""
        await self.add_neighbour_features([features], timeout)

    async def add_neighbour_features(self, batch: list[dict[str, float]],
                                     timeout: float | None = None) -> None:
        """Add the declared neighbour feature to each of ``batch`` (when one is declared):
        the mean label of its k nearest labeled events, all searched in one call. When it
        cannot be had (no frozen embedder yet, no labeled neighbours, Milvus past the time
        budget) it is left out rather than made up: River's scalers and linear models skip
        a missing feature, while a constant stand-in followed by real values gave the
        scaler a near-zero variance and the model huge updates. Scoring never fails for
        it. ``timeout`` shortens the configured budget (what is left of an API request's
        deadline)."""
        name = self.policy.neighbour_feature
        if name is None or not batch:
            return
        outcome = "ok"
        try:
            budget = self.timeout if timeout is None else min(self.timeout, max(timeout, 0.0))
            async with asyncio.timeout(budget):  # one budget for both calls
                embedder = await self.embedder()
                if embedder is None:
                    outcome = "not_ready"
                else:
                    found = await self.store.search_events_many(
                        [embedder.vector(f) for f in batch], self.policy.neighbours)
                    for features, hits in zip(batch, found, strict=True):
                        if hits:
                            features[name] = neighbour_rate([h["label"] for h in hits])
                        else:
                            outcome = "not_ready"
        except TimeoutError:
            outcome = "timeout"
        except Exception:  # noqa: BLE001 - Milvus or Redis is down: score without it
            log.warning("%s: neighbour search failed", self.spec.name, exc_info=True)
            outcome = "error"
        metrics.NEIGHBOUR_LOOKUPS.labels(pipeline=self.spec.name, process=self.process,
                                         outcome=outcome).inc(len(batch))

    async def close(self) -> None:
        await self.store.close()
