"""Redis adapters shared by the worker and the API: the online feature store and the
model snapshots. All Redis key names are built here and nowhere else.

Model snapshots, checkpoints and the embedder are pickled River models, signed
(:mod:`driftline.adapters.signing`): each is verified before it is loaded, and one that is
unsigned, altered or names a class a model does not need is refused, counted
(``driftline_blobs_refused_total``) and logged, and the model in memory stays. The key is
that of the settings the client was made with (:func:`connect`), else of
``Settings.from_env()``; a store may also be given one.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import hiredis
import orjson
import redis.asyncio as aioredis
from redis.exceptions import DataError

from driftline.adapters.config import Settings
from driftline.adapters.signing import (
    Refusals,
    client_settings,
    load_signed,
    sign,
    signing_key_of,
)
from driftline.errors import BlobRefused

log = logging.getLogger(__name__)

class PackedConnection(aioredis.Connection):
    """A connection whose commands hiredis packs from the arguments as given.

    redis-py runs its Python encoder over every argument before hiredis packs the
    command: half the time of a batch of feature writes (37 arguments an entity: 59
    microseconds an entity, 31 without). hiredis encodes str, bytes, memoryview, int and
    float exactly as that encoder does, and refuses the rest (a ``DataError``, as the
    encoder does).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._command_packer = _HiredisPacker()


class _HiredisPacker:
    def pack(self, *args: Any) -> list[bytes]:
        # "CONFIG GET" is two arguments, as redis-py splits them.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            pass
        try:  # a bytearray, which redis-py sends and hiredis takes as bytes only
            return [hiredis.pack_command(
                tuple(bytes(a) if isinstance(a, bytearray) else a for a in args))]
        except TypeError as exc:
            raise DataError(str(exc)) from None


def connect(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client for the configured URL (connections are made lazily)."""
    extra: dict[str, Any] = {}
    if settings.redis_url.startswith("redis://"):  # not TLS nor a Unix socket
        extra["connection_class"] = PackedConnection
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                     socket_connect_timeout=5, health_check_interval=30,
                                     **extra)
    client_settings[client] = settings
    return client


@dataclass(frozen=True)
class RedisKeys:
    prefix: str
    pipeline: str

    def features(self, entity: str) -> str:
        return f"{self.prefix}{self.pipeline}:features:{entity}"

    @property
    def model(self) -> str:
        return f"{self.prefix}{self.pipeline}:model"

    @property
    def learner(self) -> str:
        return f"{self.prefix}{self.pipeline}:learner"

    @property
    def checkpoint(self) -> str:
        return f"{self.prefix}{self.pipeline}:checkpoint"

    @property
    def challenger(self) -> str:
        """The challenger a traffic split serves (or shadows), a snapshot like ``model``."""
        return f"{self.prefix}{self.pipeline}:challenger"

    @property
    def traffic(self) -> str:
        """The pipeline's traffic split between champion and challenger, if any."""
        return f"{self.prefix}{self.pipeline}:traffic"

    @property
    def embedding(self) -> str:
        """The embedding agent's checkpoint and the frozen embedder it publishes."""
        return f"{self.prefix}{self.pipeline}:embedding"

    @property
    def forgotten(self) -> str:
        """Erased entities, each with its newest event time when it was erased."""
        return f"{self.prefix}{self.pipeline}:forgotten"


class FeatureStore:
    """One hash per entity: its latest features (readable by anyone) and the window state
    that lets the API compute a new event's features exactly as the worker would."""

    # HSET of each key with its share of the arguments: ARGV holds, per key, the number of
    # its arguments, then its fields and values.
    _PUT_MANY = """
    local i = 1
    for k = 1, #KEYS do
      local n = tonumber(ARGV[i])
      redis.call('HSET', KEYS[k], unpack(ARGV, i + 1, i + n))
      i = i + n + 1
    end
    return #KEYS
    """

    def __init__(self, client: aioredis.Redis, keys: RedisKeys) -> None:
        self.redis = client
        self.keys = keys
        self._put_many: Any = None  # the script, registered on first use

    async def put(self, entity: str, features: dict[str, float], state: dict[str, Any],
                  event_time: float) -> None:
        await self.put_many([(entity, features, state, event_time)])

    async def put_many(self, rows: list[tuple[str, dict[str, float], dict[str, Any], float]]
                       ) -> None:
        """Write each ``(entity, features, state, event_time)`` in one command: one script
        call costs half the client time of a pipeline of HSETs, whose replies redis-py
        reads one by one (32 microseconds an entity, against 15)."""
        if not rows:
            return
        written_at = repr(time.time())
        keys: list[str] = []
        args: list[Any] = []
        for entity, features, state, event_time in rows:
            keys.append(self.keys.features(entity))
            args.append(2 * len(features) + 6)
            for name, value in features.items():
                args.append(name)
                args.append(repr(float(value)))
            # orjson: the same JSON as json.dumps, a tenth of the time
            args += ("_event_time", repr(event_time), "_state", orjson.dumps(state),
                     "_written_at", written_at)
        if self._put_many is None:
            self._put_many = self.redis.register_script(self._PUT_MANY)
        await self._put_many(keys=keys, args=args)

    async def delete(self, entity: str) -> bool:
        """Erase the entity's features and window state; whether there were any."""
        return bool(await self.redis.delete(self.keys.features(entity)))

    async def states_json(self, entities: list[str]) -> list[bytes | None]:
        """Each entity's window state as stored (JSON; None when unknown), in one round
        trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for entity in entities:
                pipe.hget(self.keys.features(entity), "_state")
            return await pipe.execute()

    async def get(self, entity: str) -> tuple[dict[str, float], dict[str, Any] | None]:
        """The entity's latest features and window state (``{}, None`` when unknown)."""
        raw = await self.redis.hgetall(self.keys.features(entity))
        if not raw:
            return {}, None
        features: dict[str, float] = {}
        state = None
        for k, v in raw.items():
            name = k.decode()
            if name == "_state":
                state = json.loads(v)
            elif not name.startswith("_"):
                features[name] = float(v)
        return features, state


@dataclass(frozen=True)
class ModelSnapshot:
    model: Any
    version: str
    published_at: float
    fallback: Any = None        # the pipeline's fallback model, learned beside this one
    fallback_examples: int = 0  # how many labeled examples the fallback has learned
    # Unique per publication: a rollback can publish a different model under a version
    # string seen before (``v2.1000``), so caches and swaps key on this, not the version.
    snapshot_id: str = ""
    # When the oldest label new in this snapshot became a training example (None: unknown).
    oldest_label_at: float | None = None


SNAPSHOT_FIELDS = ["blob", "version", "published_at", "fallback", "fallback_examples", "id",
                   "oldest_label_at"]


def _snapshot(fields: dict[str, Any], key: bytes) -> ModelSnapshot:
    """A snapshot from its stored fields (bytes from Redis, or as just published), its
    model and fallback verified with ``key``; :class:`BlobRefused` if either is not."""
    def text(name: str) -> str | None:
        value = fields.get(name)
        return value.decode() if isinstance(value, bytes) else value

    version = text("version")
    return ModelSnapshot(load_signed(fields["blob"], key), version,
                         float(text("published_at") or 0),
                         load_signed(fields["fallback"], key) if "fallback" in fields else None,
                         int(text("fallback_examples") or 0), text("id") or version,
                         float(text("oldest_label_at")) if "oldest_label_at" in fields else None)


class SnapshotStore:
    """The latest model snapshot of a pipeline, written by its one learner, and the
    learner's checkpoint; with ``key=keys.challenger``, the challenger of a traffic split."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys, key: str | None = None, *,
                 signing_key: bytes | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.key = key or keys.model
        self.published: dict[str, Any] = {}  # the fields last published from here
        self._signing_key = signing_key
        kind = "challenger" if key is not None and key == keys.challenger else "snapshot"
        self._refusals = Refusals(kind, keys.pipeline)
        self._checkpoint_refusals = Refusals("checkpoint", keys.pipeline)

    @property
    def signing_key(self) -> bytes:
        """The key its blobs are signed and verified with (read on first use)."""
        if self._signing_key is None:
            self._signing_key = signing_key_of(self.redis)
        return self._signing_key

    async def publish(self, model: Any, version: str, *, only_if_absent: bool = False,
                      fallback: Any = None, fallback_examples: int = 0,
                      oldest_label_at: float | None = None) -> bool:
        """Store ``model`` as ``version``; with ``only_if_absent``, only when none exists.

        ``oldest_label_at`` is when the oldest label this model has learned and the one
        before it had not became a training example (a scorer that swaps it in measures
        label-to-serving time from it)."""
        # Pickled (and signed) before the first await: nothing can change them half-way.
        key = self.signing_key
        mapping = {"blob": sign(model, key), "version": version,
                   "published_at": repr(time.time()), "id": uuid.uuid4().hex}
        if fallback is not None:
            mapping["fallback"] = sign(fallback, key)
            mapping["fallback_examples"] = str(fallback_examples)
        if oldest_label_at is not None:
            mapping["oldest_label_at"] = repr(oldest_label_at)
        if only_if_absent:
            # HSETNX on the version claims the key; the losers of a race write nothing.
            if not await self.redis.hsetnx(self.key, "version", version):
                return False
        await self.redis.hset(self.key, mapping=mapping)
        self.published = mapping
        return True

    def last_published(self) -> ModelSnapshot:
        """What this store last published, as a scorer would load it (a copy)."""
        return _snapshot(self.published, self.signing_key)

    async def save_checkpoint(self, learner: Any, version: str) -> None:
        """The learner's whole state (its model, its input offset, the drift monitors'
        windows): heavier than the model, so written on a cadence of its own. After a
        crash the learner resumes from it and learns again, from the training log, what
        came after; the served model may be ahead of it meanwhile, never behind for long."""
        await self.redis.hset(self.keys.checkpoint,
                              mapping={"state": sign(learner, self.signing_key),
                                       "version": version})

    async def load_checkpoint(self) -> Any:
        """The learner as last checkpointed, or None; :class:`BlobRefused` (counted and
        logged) for a checkpoint that is not signed with our key or names a class a
        learner does not need."""
        blob = await self.redis.hget(self.keys.checkpoint, "state")
        if blob is None:
            return None
        try:
            return load_signed(blob, self.signing_key)
        except BlobRefused as exc:
            self._checkpoint_refusals.refused(exc, blob, "learner checkpoint")
            raise

    async def snapshot_id(self) -> str | None:
        """The published snapshot's unique id (its version, for one published before ids)."""
        found, version = await self.redis.hmget(self.key, ["id", "version"])
        value = found if found is not None else version
        return value.decode() if value is not None else None

    async def load(self) -> ModelSnapshot | None:
        """The published snapshot, verified; None when there is none. One that is refused
        raises :class:`BlobRefused`, counted and logged once."""
        values = await self.redis.hmget(self.key, SNAPSHOT_FIELDS)
        found = {k: v for k, v in zip(SNAPSHOT_FIELDS, values, strict=True) if v is not None}
        if "blob" not in found or "version" not in found:
            return None
        try:
            return _snapshot(found, self.signing_key)
        except BlobRefused as exc:
            version = found["version"].decode(errors="replace")
            self._refusals.refused(exc, found["blob"] + found.get("fallback", b""),
                                   f"version {version}")
            raise

    async def delete(self) -> None:
        await self.redis.delete(self.key)


class EmbeddingStore:
    """The embedding agent's checkpoint, the frozen embedder it publishes for the scorers
    and the API, and the register of erased entities."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys, *,
                 signing_key: bytes | None = None) -> None:
        self.redis = client
        self.keys = keys
        self._signing_key = signing_key
        self._checkpoint_refusals = Refusals("embedding_checkpoint", keys.pipeline)
        self._embedder_refusals = Refusals("embedder", keys.pipeline)

    @property
    def signing_key(self) -> bytes:
        if self._signing_key is None:
            self._signing_key = signing_key_of(self.redis)
        return self._signing_key

    async def save(self, checkpoint: Any, embedder: Any | None) -> None:
        key = self.signing_key
        mapping = {"checkpoint": sign(checkpoint, key)}
        if embedder is not None:
            mapping["embedder"] = sign(embedder, key)
        await self.redis.hset(self.keys.embedding, mapping=mapping)

    async def checkpoint(self) -> Any:
        """The agent's checkpoint, or None; :class:`BlobRefused` (counted and logged) for
        one that is not signed with our key or names a class it does not need."""
        blob = await self.redis.hget(self.keys.embedding, "checkpoint")
        if blob is None:
            return None
        try:
            return load_signed(blob, self.signing_key)
        except BlobRefused as exc:
            self._checkpoint_refusals.refused(exc, blob)
            raise

    async def embedder(self) -> Any:
        """The frozen embedder, or None while the agent is still fitting it, and None
        (counted and logged once) when the one stored is refused: scoring goes on without
        the neighbour feature."""
        blob = await self.redis.hget(self.keys.embedding, "embedder")
        if blob is None:
            return None
        try:
            return load_signed(blob, self.signing_key)
        except BlobRefused as exc:
            self._embedder_refusals.refused(exc, blob)
            return None

    async def forget(self, entity: str, until: float) -> None:
        """Record that ``entity``'s data up to event time ``until`` is erased."""
        await self.redis.hset(self.keys.forgotten, entity, repr(until))

    async def forgotten_until(self, entity: str) -> float | None:
        """The event time up to which ``entity``'s data is erased, if it was."""
        return (await self.forgotten_among([entity])).get(entity)

    async def forgotten_among(self, entities: list[str]) -> dict[str, float]:
        """Those of ``entities`` that were erased, each with the event time up to which its
        data is erased, in one round trip."""
        if not entities:
            return {}
        values = await self.redis.hmget(self.keys.forgotten, entities)
        return {e: float(v) for e, v in zip(entities, values, strict=True) if v is not None}

    async def forgotten(self) -> dict[str, float]:
        raw = await self.redis.hgetall(self.keys.forgotten)
        return {k.decode(): float(v) for k, v in raw.items()}


class TrafficStore:
    """The traffic split of a pipeline (its JSON) and the challenger's snapshot."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys, *,
                 signing_key: bytes | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.challenger = SnapshotStore(client, keys, key=keys.challenger,
                                        signing_key=signing_key)

    async def set(self, split: dict[str, Any], model: Any, version: str) -> None:
        """Publish ``model`` as the challenger, then the split that serves it."""
        await self.challenger.publish(model, version)
        await self.redis.set(self.keys.traffic, json.dumps(split))

    async def get(self) -> dict[str, Any] | None:
        raw = await self.redis.get(self.keys.traffic)
        return json.loads(raw) if raw is not None else None

    async def clear(self) -> bool:
        """End the split (the champion serves everything); whether there was one."""
        ended = bool(await self.redis.delete(self.keys.traffic))
        await self.challenger.delete()
        return ended


class LiveModel:
    """The model a scoring process serves: swapped for a newer snapshot when one appears.

    Scoring reads ``current`` and never waits for a load: :meth:`refresh` replaces the
    whole snapshot object at once, so a request sees either the old or the new model.
    """

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self.current: ModelSnapshot | None = None
        self.refused: str | None = None  # the id of the last snapshot refused

    async def refresh(self) -> bool:
        """Load the published snapshot if it is newer than ours; return whether it was.
        One that is refused (unsigned, altered, naming a forbidden class: counted and
        logged by the store) is not swapped in nor loaded again: the model in memory
        stays until a valid one is published."""
        found = await self.store.snapshot_id()
        if found is None or (self.current and self.current.snapshot_id == found) \
                or found == self.refused:
            return False
        try:
            snap = await self.store.load()
        except BlobRefused:
            self.refused = found
            return False
        if snap is None:
            return False
        self.current = snap
        return True

    def adopt(self, snap: ModelSnapshot) -> bool:
        """Serve ``snap`` now, published by a learner in this process (no wait for the
        next refresh); whether it was new."""
        if self.current is not None and self.current.snapshot_id == snap.snapshot_id:
            return False
        self.current = snap
        return True


def delete_namespace_keys(settings: Settings) -> int:
    """Delete every Redis key of ``settings.namespace`` (refuses the empty namespace)."""
    import redis

    if not settings.namespace:
        raise ValueError("refusing to delete keys without a namespace")
    client = redis.Redis.from_url(settings.redis_url)
    deleted = 0
    for key in client.scan_iter(match=settings.redis_prefix + "*", count=1000):
        deleted += client.delete(key)
    client.close()
    return deleted


def learner_status(settings: Settings, pipeline: str) -> dict[str, str]:
    """The learner's status as it last wrote it (version, updates, next_offset, metrics...),
    for the operators' tools, the benchmarks and the tests; empty before its first write."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.hgetall(RedisKeys(settings.redis_prefix, pipeline).learner)
    finally:
        client.close()
    return {k.decode(): v.decode() for k, v in raw.items()}
