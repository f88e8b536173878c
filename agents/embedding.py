"""The embedding agent: labeled events and entity profiles into Milvus.

::

    <p>.training --embed--> <prefix>_events    one vector per labeled event (upsert by id)
                            <prefix>_entities  one time-decayed profile per entity

It is a second reader of the training topic, beside the learner, so a slow or absent
Milvus delays the vectors and never the model: when a backlog of ten batches cannot be
written, the agent drops it and stops applying records (Kafka keeps them); once Milvus
answers again it resumes from its checkpoint and fetches what it skipped.

Exactly once, as the learner: the checkpoint in Redis holds the offset of the next example
to apply and is written only after the vectors before it are in Milvus. Event rows are
upserts by event id and a profile remembers the offset of its newest event, so a batch
written again after a crash changes nothing.

The first ``fit_rows`` examples teach the standardizer (:mod:`streams.embeddings`); they
wait in the checkpoint until it is frozen, and are then written like any other.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import faust

from driftline.stores import EmbeddingStore
from driftline.vectors import VectorStore, ensure_collections
from monitoring import metrics as m
from streams.embeddings import EventEmbedder, Profile
from streams.schemas import InvalidRecord, TrainingExample, parse

if TYPE_CHECKING:
    from agents.pipeline import PipelineAgents

log = logging.getLogger(__name__)


@dataclass
class EmbeddingCheckpoint:
    """What a restart of the agent needs; pickled into Redis after each written batch."""

    embedder: EventEmbedder
    next_offset: int | None = None
    # Examples (with their offsets) the standardizer learned from, until it is frozen.
    warmup: list[tuple[int, TrainingExample]] = field(default_factory=list)
    # Recent event ids: the join may emit an example twice, a profile counts it once.
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)

    DEDUPE_WINDOW = 5000


class EmbeddingAgent:
    """Registers the embed agent and its flush timer for ``agents``' pipeline."""

    def __init__(self, agents: PipelineAgents) -> None:
        self.a = agents
        self.spec = agents.p
        self.name = agents.name
        self.policy = agents.p.embeddings
        self.s = agents.s
        self.state: EmbeddingCheckpoint | None = None
        self.pending: list[tuple[int, TrainingExample]] = []  # applied, not yet in Milvus
        self._saved_offset: int | None = None
        self._flushed_at = time.monotonic()
        self._lock = asyncio.Lock()
        self._collections_ready = False
        self._suspended = False  # Milvus (or Redis) down: records are left to Kafka
        self._erasures_applied: dict[str, float] = {}
        self._unsealed = 0  # rows written since the collections were last flushed
        app: faust.App = agents.app
        app.agent(agents.training_topic, name=f"{self.name}-embed")(self.embed)
        app.timer(self.s.vector_flush_seconds)(self.flush_if_due)
        app.on_partitions_revoked.connect(self._on_revoked)

    @functools.cached_property
    def vectors(self) -> VectorStore:
        return VectorStore(self.s, self.spec)  # made on first use, inside the loop

    @property
    def store(self) -> EmbeddingStore:
        return self.a.embedding_store

    async def _on_revoked(self, sender: Any, revoked: Any, **_: Any) -> None:
        if any(tp.topic == self.a.topics.training for tp in revoked):
            async with self._lock:  # resume from the checkpoint if it comes back
                self.state, self.pending = None, []

    # ---- applying examples ----------------------------------------------------------

    async def embed(self, stream: faust.StreamT) -> None:
        await self.a._consume(stream, "embed", self._embed_one)

    async def _embed_one(self, event: faust.EventT) -> None:
        """Apply one training record; never blocks the stream the learner shares, and
        never dead-letters (the learner does, once per record)."""
        if self._suspended:
            return  # resumed from the checkpoint, which is before this record
        async with self._lock:
            try:
                state = await self._state()
                await self.a.apply_in_order(state, event, functools.partial(self._apply, state),
                                            reader="embed", after_chunk=self._flush_or_raise)
                if (len(self.pending) >= self.s.vector_batch and not await self._flush_locked()
                        and len(self.pending) >= 10 * self.s.vector_batch):
                    self._suspend("ten batches could not be written")
            except Exception:  # noqa: BLE001 - Redis, Kafka or Milvus down: resume later
                log.warning("%s: embedding failed", self.name, exc_info=True)
                self._suspend("a store did not answer")

    def _suspend(self, why: str) -> None:
        """Forget what is not written; resume from the checkpoint once Milvus answers.
        Callers hold the lock."""
        log.warning("%s: embedding suspended (%s); %d rows left to Kafka", self.name, why,
                    len(self.pending))
        self.state, self.pending, self._suspended = None, [], True
        m.VECTOR_WRITER_SUSPENDED.labels(self.name).set(1)

    async def _flush_or_raise(self) -> None:
        if not await self._flush_locked():
            raise RuntimeError("could not write the vectors of a fetched gap")

    def _apply(self, state: EmbeddingCheckpoint, value: bytes, offset: int) -> None:
        state.next_offset = offset + 1
        try:
            example = parse(TrainingExample, value)
        except InvalidRecord:
            return  # the learner dead-letters it; one dead letter per record is enough
        if (example.event_id in state.seen
                or self.a.forgotten(example.entity, example.event_time)):
            return
        state.seen[example.event_id] = None
        while len(state.seen) > state.DEDUPE_WINDOW:
            state.seen.popitem(last=False)
        if state.embedder.frozen:
            self.pending.append((offset, example))
            return
        state.warmup.append((offset, example))
        if state.embedder.fit_one(example.features):
            self.pending.extend(state.warmup)
            state.warmup = []
            log.info("%s: embedding standardizer frozen after %d labeled events", self.name,
                     state.embedder.rows)

    async def _state(self) -> EmbeddingCheckpoint:
        if self.state is None:
            state = await self.store.checkpoint()
            self.state = state or EmbeddingCheckpoint(EventEmbedder(self.spec))
            self._saved_offset = self.state.next_offset
            log.info("%s: embedding agent at offset %s (%d warm-up rows)", self.name,
                     self.state.next_offset, len(self.state.warmup))
        return self.state

    # ---- writing to Milvus -----------------------------------------------------------

    async def flush_if_due(self, *_: Any) -> None:
        if self._suspended:
            try:
                await self.vectors.client.list_collections(timeout=5)
                await self.a.redis.ping()
            except Exception:  # noqa: BLE001 - still down
                return
            log.warning("%s: embedding resumed from its checkpoint", self.name)
            self._suspended = False
            m.VECTOR_WRITER_SUSPENDED.labels(self.name).set(0)
            return
        if time.monotonic() - self._flushed_at >= self.s.vector_flush_seconds:
            await self.flush()

    async def flush(self) -> bool:
        async with self._lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> bool:
        """Apply new erasures, write the pending vectors and profiles, then the checkpoint;
        whether it worked. Callers hold the lock."""
        state = self.state
        self._flushed_at = time.monotonic()
        started = time.perf_counter()
        try:
            await self._apply_erasures()
            if state is None or (not self.pending and state.next_offset == self._saved_offset):
                return True
            if self.pending:
                await self._write(state.embedder, self.pending)
            await self.store.save(state, state.embedder if state.embedder.frozen else None)
        except Exception:  # noqa: BLE001 - Milvus or Redis is down: retry next round
            log.warning("%s: could not write %d vectors, will retry", self.name,
                        len(self.pending), exc_info=True)
            backlog = len(self.pending) + (len(state.warmup) if state else 0)
            m.VECTOR_BACKLOG.labels(self.name).set(backlog)
            return False
        self.pending = []
        self._saved_offset = state.next_offset
        m.VECTOR_BACKLOG.labels(self.name).set(len(state.warmup))
        m.VECTOR_FLUSH_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        return True

    async def _ensure_collections(self) -> None:
        if not self._collections_ready:
            await asyncio.to_thread(ensure_collections, self.s, self.spec)
            self._collections_ready = True

    async def _apply_erasures(self) -> None:
        """Erase, again, the vectors of entities erased since the last round: a batch this
        agent wrote while the API erased them may have landed after the API's deletes."""
        await self.a.refresh_forgotten()
        new = {e: t for e, t in self.a.forgotten_entities().items()
               if self._erasures_applied.get(e) != t}
        if not new:
            return
        await self._ensure_collections()
        for entity in new:
            await self.vectors.forget(entity)
        self._erasures_applied.update(new)
        if self.state is not None:  # nor keep them, in memory or in the checkpoint
            self.state.warmup = [(o, e) for o, e in self.state.warmup
                                 if not self.a.forgotten(e.entity, e.event_time)]
        self.pending = [(o, e) for o, e in self.pending
                        if not self.a.forgotten(e.entity, e.event_time)]

    async def _write(self, embedder: EventEmbedder, batch: list[tuple[int, TrainingExample]]
                     ) -> None:
        await self._ensure_collections()
        batch = [(o, e) for o, e in batch if not self.a.forgotten(e.entity, e.event_time)]
        rows, vectors = [], {}
        for offset, ex in batch:
            vectors[offset] = embedder.vector(ex.features)
            rows.append({"id": ex.event_id, "vector": vectors[offset], "entity": ex.entity,
                         "label": float(ex.label), "event_time": ex.event_time,
                         "score": ex.score, "model_version": ex.model_version[:64],
                         "offset": offset})
        await self.vectors.upsert_events(rows)
        profiles = await self.vectors.profiles(ex.entity for _, ex in batch)
        changed: dict[str, Profile] = {}
        for offset, ex in batch:
            before = changed.get(ex.entity) or profiles.get(ex.entity)
            label, t = float(ex.label), ex.event_time
            changed[ex.entity] = (
                Profile.first(vectors[offset], label, t, offset) if before is None else
                before.add(vectors[offset], label, t, offset, self.policy.profile_half_life))
        await self.vectors.upsert_profiles(changed)
        self._unsealed += len(rows) + len(changed)
        if self._unsealed >= self.s.vector_seal_rows:
            await self.vectors.seal()
            self._unsealed = 0
        m.VECTORS_WRITTEN.labels(self.name, "events").inc(len(rows))
        m.VECTORS_WRITTEN.labels(self.name, "entities").inc(len(changed))
