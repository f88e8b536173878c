"""The embedding agent: labeled events and entity profiles into Milvus.

::

    <p>.training --embed--> <prefix>_events    one vector per labeled event (upsert by id)
                            <prefix>_entities  one time-decayed profile per entity

It is the training log's second reader, handed the learner's batches, which a task of
its own applies (up to twenty batches queue; beyond, it reads them from Kafka later), and
keeps its own cursor and checkpoint: a slow or absent Milvus delays the vectors and never
the model. When a backlog of ten batches cannot be written, the agent drops it and only
notes the records that come (Kafka keeps them); once Milvus answers again its timer
catches up from the checkpoint, chunk by chunk.

Exactly once, as the learner: the checkpoint in Redis holds the offset of the next example
to apply and is written only after the vectors before it are in Milvus. Event rows are
upserts by event id and a profile remembers the offset of its newest event, so a batch
written again after a crash changes nothing.

The first ``fit_rows`` examples teach the standardizer (:mod:`streams.embeddings`); they
wait in the checkpoint until it is frozen, and are then written like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from agents.training_log import TrainingLog
from driftline.adapters.config import Settings
from driftline.adapters.stores import EmbeddingStore
from driftline.adapters.vectors import VectorStore, ensure_collections
from monitoring import metrics
from streams.declarations import PipelineSpec
from streams.embeddings import EventEmbedder, Profile
from streams.schemas import InvalidRecord, TrainingExample

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
    # Erasures applied to the collections: entity -> erased up to this event time.
    erasures: dict[str, float] = field(default_factory=dict)

    DEDUPE_WINDOW = 5000


# Entity profiles kept in memory (a profile is a vector and five numbers).
PROFILE_CACHE = 50_000
# Training batches waiting for the agent (a batch is up to DRIFTLINE_WORKER_BATCH records).
INBOX_BATCHES = 20


class EmbeddingAgent:
    """Applies the training log's batches for one pipeline, and its flush timer.

    Three modes: ``live`` applies records as they come; ``catching_up`` closes a long gap
    from the checkpoint (after a restart far behind, or an outage), a chunk per timer
    round, while the stream's records are only noted; ``suspended`` waits for Milvus
    and Redis to answer.
    """

    def __init__(self, settings: Settings, spec: PipelineSpec, store: EmbeddingStore,
                 training_log: TrainingLog, redis: Any) -> None:
        self.spec = spec
        self.name = spec.name
        self.policy = spec.embeddings
        self.settings = settings
        self.store = store
        self.training_log = training_log
        self.redis = redis
        self.state: EmbeddingCheckpoint | None = None
        self.pending: list[tuple[int, TrainingExample]] = []  # applied, not yet in Milvus
        self._saved_offset: int | None = None
        self._flushed_at = time.monotonic()
        self._lock = asyncio.Lock()
        self._collections_ready = False
        self._mode = "live"
        self._latest: int | None = None  # the newest record noted while not live
        # Erased entities (DELETE /v1/entities) as last read, each with its erasure time.
        self._forgotten: dict[str, float] = {}
        self._unsealed = 0  # rows written since the collections were last flushed
        # Entity profiles as this agent last wrote them (it is their only writer): read
        # back from Milvus for every batch, they cost a tenth of the worker's time.
        self._profiles: LRUCache = LRUCache(maxsize=PROFILE_CACHE)
        # Batches the learner handed over, applied by a task of this agent's own: a Milvus
        # write (50-200 ms for Milvus Lite) never holds the learner up.
        self._inbox: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=INBOX_BATCHES)
        self._applier: asyncio.Task | None = None

    @functools.cached_property
    def vectors(self) -> VectorStore:
        return VectorStore(self.settings, self.spec)  # made on first use, inside the loop

    async def forget(self) -> None:
        """The training partition was revoked: resume from the checkpoint if it comes back."""
        applier, self._applier = self._applier, None
        if applier is not None:
            applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await applier
        while not self._inbox.empty():
            self._inbox.get_nowait()
        async with self._lock:
            self.state, self.pending, self._latest = None, [], None
            self._profiles.clear()
            self._set_mode("live")

    def _set_mode(self, mode: str) -> None:
        if mode != self._mode:
            log.warning("%s: embedding %s", self.name, mode.replace("_", " "))
        self._mode = mode
        metrics.VECTOR_WRITER_SUSPENDED.labels(pipeline=self.name).set(int(mode == "suspended"))

    # ---- applying examples ----------------------------------------------------------

    def on_records(self, records: Sequence[Any]) -> None:
        """Take a batch of training records, after the learner, to apply in order. Never
        waits: with :data:`INBOX_BATCHES` queued already (Milvus slower than the learner),
        the agent catches up from Kafka later, as after an outage. Never dead-letters (the
        learner does, once per record)."""
        if not records:
            return
        if self._mode == "live" and self._inbox.full():
            self._set_mode("catching_up")
        if self._mode != "live":
            self._note(records[-1].message.offset)  # the timer reaches it from the checkpoint
            return
        if self._applier is None or self._applier.done():
            self._applier = asyncio.create_task(self._apply_inbox())
        self._inbox.put_nowait(list(records))

    async def _apply_inbox(self) -> None:
        while True:
            records = await self._inbox.get()
            for rec in records:
                await self._embed_one(rec)

    async def _embed_one(self, record: Any) -> None:
        offset = record.message.offset
        if self._mode != "live":
            self._note(offset)
            return  # the timer reaches it from the checkpoint
        async with self._lock:
            try:
                state = await self._state(first_offset=offset)
                if state.next_offset is not None \
                        and offset - state.next_offset > self.training_log.GAP_CHUNK:
                    self._latest = offset  # a long gap: closed by the timer, chunk by chunk
                    self._set_mode("catching_up")
                    return
                await self.training_log.apply_in_order(
                    state, record, functools.partial(self._apply, state), reader="embed")
                if (len(self.pending) >= self.settings.vector_batch
                        and not await self._flush_locked()
                        and len(self.pending) >= 10 * self.settings.vector_batch):
                    self._suspend("ten batches could not be written", offset)
            except Exception:  # noqa: BLE001 - Redis, Kafka or Milvus down: resume later
                log.warning("%s: embedding failed", self.name, exc_info=True)
                self._suspend("a store did not answer", offset)

    def _suspend(self, why: str, offset: int) -> None:
        """Forget what is not written; resume from the checkpoint once Milvus and Redis
        answer. Callers hold the lock."""
        log.warning("%s: %s; %d rows left to Kafka", self.name, why, len(self.pending))
        self.state, self.pending = None, []
        self._profiles.clear()
        self._note(offset)
        self._set_mode("suspended")

    def _note(self, offset: int) -> None:
        """Remember the newest record left for the timer to reach."""
        self._latest = offset if self._latest is None else max(offset, self._latest)

    def _forgotten_event(self, example: TrainingExample) -> bool:
        """Whether the example is part of data erased on request (as last read)."""
        until = self._forgotten.get(example.entity)
        return until is not None and example.event_time <= until

    async def _catch_up(self) -> None:
        """Close the gap between the checkpoint and the newest record noted, a chunk at a
        time (each written before the next is read; the lock is let go between chunks, so
        that a rebalance's :meth:`forget` never waits for more than one)."""
        while self._mode == "catching_up" and await self._catch_up_chunk():
            pass

    async def _catch_up_chunk(self) -> bool:
        """One chunk of the gap; whether there may be more."""
        async with self._lock:
            try:
                if self.state is None and await self.store.checkpoint() is None:
                    self._set_mode("live")  # nothing to catch up from: the next record starts
                    return False
                state = await self._state(first_offset=None)
                if state.next_offset is None or self._latest is None \
                        or state.next_offset > self._latest:
                    self._set_mode("live")
                    return False
                end = min(self._latest + 1, state.next_offset + self.training_log.GAP_CHUNK)
                for rec in await self.training_log.fetch(state, end, reader="embed"):
                    self._apply(state, rec.value, rec.offset)
                if not await self._flush_locked():
                    self._suspend("could not write a caught-up chunk", self._latest)
                    return False
                return True
            except Exception:  # noqa: BLE001 - a store is down again
                log.warning("%s: catching up failed", self.name, exc_info=True)
                self._suspend("a store did not answer", self._latest or 0)
                return False

    def _apply(self, state: EmbeddingCheckpoint, value: bytes, offset: int) -> None:
        state.next_offset = offset + 1
        try:
            example = self.training_log.example(value, offset)
        except InvalidRecord:
            return  # the learner dead-letters it; one dead letter per record is enough
        if example.event_id in state.seen or self._forgotten_event(example):
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

    async def _state(self, first_offset: int | None) -> EmbeddingCheckpoint:
        """The agent's state, from its checkpoint; without one, a new state starting at
        ``first_offset``, saved at once, so that a suspension before the first written
        batch resumes from there rather than from wherever the consumer is then."""
        if self.state is None:
            state = await self.store.checkpoint()
            if state is None:
                state = EmbeddingCheckpoint(EventEmbedder(self.spec), next_offset=first_offset)
                await self.store.save(state, None)
            self.state = state
            self._saved_offset = state.next_offset
            log.info("%s: embedding agent at offset %s (%d warm-up rows)", self.name,
                     state.next_offset, len(state.warmup))
        return self.state

    # ---- writing to Milvus -----------------------------------------------------------

    async def flush_if_due(self, *_: Any) -> None:
        if self._mode == "suspended":
            try:
                await self.vectors.client.list_collections(timeout=5)
                await self.redis.ping()
            except Exception:  # noqa: BLE001 - still down
                return
            self._set_mode("catching_up")
        if self._mode == "catching_up":
            await self._catch_up()
        elif time.monotonic() - self._flushed_at >= self.settings.vector_flush_seconds:
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
            metrics.VECTOR_BACKLOG.labels(pipeline=self.name).set(backlog)
            return False
        self.pending = []
        self._saved_offset = state.next_offset
        metrics.VECTOR_BACKLOG.labels(pipeline=self.name).set(len(state.warmup))
        metrics.VECTOR_FLUSH_SECONDS.labels(pipeline=self.name).observe(
            time.perf_counter() - started)
        return True

    async def _ensure_collections(self) -> None:
        if not self._collections_ready:
            await asyncio.to_thread(ensure_collections, self.settings, self.spec)
            self._collections_ready = True

    async def _apply_erasures(self) -> None:
        """Erase, again, the vectors of entities erased since the last round (up to their
        erasure time): a batch this agent wrote while the API erased them may have landed
        after the API's deletes. What was applied is in the checkpoint, so a restart does
        not erase again, and never touches an entity's later vectors."""
        state = self.state
        if state is None:
            return
        self._forgotten = await self.store.forgotten()
        new = {e: t for e, t in self._forgotten.items() if state.erasures.get(e) != t}
        if not new:
            return
        await self._ensure_collections()
        for entity, until in new.items():
            self._profiles.pop(entity, None)
            await self.vectors.forget(entity, until)
        state.erasures.update(new)
        # Nor keep their rows, in memory or in the checkpoint; the rows applied later are
        # dropped as they are applied.
        state.warmup = [(o, e) for o, e in state.warmup if not self._forgotten_event(e)]
        self.pending = [(o, e) for o, e in self.pending if not self._forgotten_event(e)]
        self._saved_offset = None  # the checkpoint changed: write it

    async def _write(self, embedder: EventEmbedder, batch: list[tuple[int, TrainingExample]]
                     ) -> None:
        await self._ensure_collections()
        rows, vectors = [], {}
        for offset, ex in batch:
            vectors[offset] = embedder.vector(ex.features)
            rows.append({"id": ex.event_id, "vector": vectors[offset], "entity": ex.entity,
                         "label": float(ex.label), "event_time": ex.event_time,
                         "score": ex.score, "model_version": ex.model_version[:64],
                         "offset": offset})
        await self.vectors.upsert_events(rows)
        known = self._profiles
        stored = await self.vectors.profiles(
            {ex.entity for _, ex in batch if ex.entity not in known})
        changed: dict[str, Profile] = {}
        for offset, ex in batch:
            before = changed.get(ex.entity) or known.get(ex.entity) or stored.get(ex.entity)
            label, t = float(ex.label), ex.event_time
            changed[ex.entity] = (
                Profile.first(vectors[offset], label, t, offset) if before is None else
                before.add(vectors[offset], label, t, offset, self.policy.profile_half_life))
        await self.vectors.upsert_profiles(changed)
        known.update(changed)
        self._unsealed += len(rows) + len(changed)
        if self._unsealed >= self.settings.vector_seal_rows:
            await self.vectors.seal()
            self._unsealed = 0
        metrics.VECTORS_WRITTEN.labels(pipeline=self.name, kind="events").inc(len(rows))
        metrics.VECTORS_WRITTEN.labels(pipeline=self.name, kind="entities").inc(len(changed))
