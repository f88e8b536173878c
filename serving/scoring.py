"""Scoring one pipeline's events in the API: features, model, explanation, fallback.

:class:`PipelineScorer` is what ``POST /v1/score/<p>`` and its ``:batch`` form call; it
knows nothing of HTTP. For each event it

1. reads the entity's window state (the feature cache, else Redis) within the request's
   deadline, and computes the features with the worker's own :class:`FeatureEngine`
   (and the neighbour feature, within what is left of the deadline);
2. picks the variant: the champion, or the challenger of a ``split`` for the entities it
   serves (:mod:`serving.traffic`); in ``shadow`` mode it also scores the challenger,
   for the metrics and the log only;
3. scores with the model held in memory and explains the score
   (:mod:`online_models.explain`), both through the inference cache.

When the state is not there in time (Redis down or slow), no model is loaded yet, or the
model's score is not finite (NaN or an infinity: a poisoned model), the pipeline's
fallback model answers from the event alone (its prior, if that model is poisoned too),
and the score says ``degraded`` with the reason (``driftline_api_degraded_total``). A
pipeline without a fallback raises :class:`Unavailable` (a 503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from driftline.adapters.config import Settings
from driftline.adapters.stores import (
    FeatureStore,
    LiveModel,
    ModelSnapshot,
    RedisKeys,
    SnapshotStore,
    TrafficStore,
)
from driftline.adapters.vectors import EmbeddingSpace
from driftline.errors import Unavailable  # no answer: no features or model, no fallback
from monitoring import metrics
from monitoring.logs import entity_ref
from online_models.explain import Contribution, contributions
from online_models.learner import revision_of
from online_models.spec import predict
from serving.caches import CountingCache
from serving.traffic import TrafficSplit
from streams.declarations import PipelineSpec
from streams.engine import FeatureEngine
from streams.schemas import Record

log = logging.getLogger(__name__)
shadow_log = logging.getLogger("driftline.shadow")

# What a Redis outage looks like from redis.asyncio: its own errors, or the socket's.
UNAVAILABLE = (RedisError, OSError)
WARN_EVERY = 10.0  # seconds between two log lines about the same outage
# After failed reads in this many separate moments in a row, Redis is left alone for a
# while: every request would otherwise open a connection to a Redis that is already down
# or struggling (a timed-out command costs its connection). Reads that fail together (a
# stall of this process, a garbage collection, fails every read in flight at once) are one
# moment, not many: in a benchmark, counting them one by one opened the breaker on every
# long collection and answered a whole second from the fallback.
BREAKER_FAILURES = 3
BREAKER_SECONDS = 1.0


class NotFinite(ArithmeticError):
    """A model's score, or a contribution to it, is NaN or infinite."""


@dataclass(frozen=True)
class Score:
    """One scored event, as the API returns it."""

    event_id: str
    entity: str
    prediction: float
    model_version: str
    variant: str                      # champion, challenger, or fallback
    features: dict[str, float]
    contributions: tuple[Contribution, ...] = ()
    entity_known: bool | None = None  # None: unknown, the state could not be read
    degraded: bool = False
    degraded_reason: str | None = None


@dataclass
class Caches:
    """The caches of one API process, shared by its pipelines (keys name the pipeline)."""

    features: CountingCache
    inference: CountingCache

    @classmethod
    def from_settings(cls, settings: Settings) -> Caches:
        return cls(CountingCache("features", settings.feature_cache_size,
                                 ttl=settings.feature_cache_ttl_seconds),
                   CountingCache("inference", settings.inference_cache_size))


class PipelineScorer:
    def __init__(self, settings: Settings, spec: PipelineSpec, redis: Any, caches: Caches,
                 space: EmbeddingSpace | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.deadline = settings.api_deadline_seconds
        self.explain_top = settings.api_explain_top
        keys = RedisKeys(settings.redis_prefix, spec.name)
        self.engine = FeatureEngine(spec)
        self.store = FeatureStore(redis, keys)
        self.champion = LiveModel(SnapshotStore(redis, keys))
        self.traffic = TrafficStore(redis, keys)
        self.challenger = LiveModel(self.traffic.challenger)
        self.split: TrafficSplit | None = None
        # The newest fallback model loaded (once it has learned enough), kept through
        # outages, and the snapshot it came with.
        self.fallback_model: Any = None
        self.fallback_version = "prior"
        self.fallback_id = "prior"
        self._failures = 0          # moments with failed reads, in a row
        self._failed_at = -1e9      # the last counted one (monotonic)
        self._open_until = 0.0      # the breaker: no reads before this (monotonic)
        self._open_reason = ""
        self.caches = caches
        self.space = space
        self._warned_at = -WARN_EVERY

    def _warn(self, message: str) -> None:
        """Log an outage once per ``WARN_EVERY`` seconds, not once per request; the metrics
        count every degraded answer."""
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("%s: %s", self.name, message, extra={"pipeline": self.name})

    # ---- models: swapped in the background, never loaded by a request ------------------

    @property
    def serving_version(self) -> str | None:
        """The champion's version this process serves (None before the first load)."""
        return self.champion.current.version if self.champion.current else None

    async def refresh(self) -> bool:
        """Load a newer champion (and its fallback) and the current split; whether the
        champion changed."""
        before = self.champion.current
        swapped = await self.champion.refresh()
        snap = self.champion.current
        if swapped:
            metrics.serving(self.name, "api", revision_of(snap.version),
                      revision_of(before.version) if before else None)
        policy = self.spec.fallback
        if swapped and snap.fallback is not None and policy is not None \
                and snap.fallback_examples >= policy.min_examples:
            self.fallback_model = snap.fallback
            self.fallback_version = f"{snap.version}-fallback"
            self.fallback_id = snap.snapshot_id
        raw = await self.traffic.get()
        self.split = TrafficSplit(**raw) if raw else None
        if self.split is not None:
            await self.challenger.refresh()
        return swapped

    # ---- scoring -----------------------------------------------------------------------

    async def score(self, event: Record, explain: bool = True) -> Score:
        return (await self.score_batch([event], explain))[0]

    async def score_batch(self, events: list[Record], explain: bool = True) -> list[Score]:
        """Score ``events`` independently, each against its entity's stored state (an
        event does not see the others of its batch: the API scores, it never applies).
        ``explain=False`` leaves the contributions out (they cost one prediction per
        feature)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        entities = [self.spec.entity_of(e) for e in events]
        if loop.time() < self._open_until:
            return [self._fallback(e, self._open_reason, explain) for e in events]
        try:
            async with asyncio.timeout_at(deadline):
                states = await self._states(entities)
        except TimeoutError:
            self._failed("features_timeout")
            return [self._fallback(e, "features_timeout", explain) for e in events]
        except UNAVAILABLE as exc:
            self._failed("features_unavailable")
            self._warn(f"feature store unavailable ({exc}); the fallback answers")
            return [self._fallback(e, "features_unavailable", explain) for e in events]
        self._failures = 0
        features = [self.engine.features_for(s, e) for s, e in zip(states, events, strict=True)]
        if self.space is not None:
            await asyncio.gather(*(self.space.add_neighbour_feature(
                f, timeout=deadline - loop.time()) for f in features))
        return [self._predict(e, entity, f, state is not None, explain)
                for e, entity, f, state in zip(events, entities, features, states, strict=True)]

    def _failed(self, reason: str) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._failed_at < self.deadline:
            return  # failed with the others of the same moment
        self._failed_at = now
        self._failures += 1
        if self._failures >= BREAKER_FAILURES:
            self._open_until = asyncio.get_running_loop().time() + BREAKER_SECONDS
            self._open_reason = reason
            self._failures = 0

    def evict(self, entity: str) -> None:
        """Forget the entity's cached state (it was erased)."""
        self.caches.features.pop((self.name, entity))

    async def _states(self, entities: list[str]) -> list[dict | None]:
        # The cache keeps the stored JSON, not the parsed state: bytes are invisible to the
        # garbage collector, while thousands of nested state dicts made every full
        # collection walk them (scoring's p99 at 500 requests/s went from 2.5 to 35-50 ms).
        cache = self.caches.features
        found = [cache.get((self.name, entity)) for entity in entities]
        missing = sorted({entity for entity, hit in zip(entities, found, strict=True)
                          if hit is None})
        if missing:
            read = await self.store.states_json(missing)
            fresh = {entity: raw if raw is not None else b"" for entity, raw
                     in zip(missing, read, strict=True)}  # b"": known to be unknown
            for entity, raw in fresh.items():
                cache.put((self.name, entity), raw)
            found = [hit if hit is not None else fresh[entity]
                     for entity, hit in zip(entities, found, strict=True)]
        return [json.loads(raw) if raw else None for raw in found]

    def _predict(self, event: Record, entity: str, features: dict[str, float],
                 known: bool, explain: bool) -> Score:
        champion = self.champion.current
        if champion is None:
            return self._fallback(event, "no_model", explain)
        split = self.split
        challenger = self.challenger.current
        if challenger is not None and (split is None or challenger.version != split.version
                                       or revision_of(champion.version) == split.version):
            # Not the split's (yet): an older one, or the split is over; or the challenger
            # was promoted, and the champion (learning since) serves everyone.
            challenger = None
        variant, served = "champion", champion
        if challenger is not None and split.serves_challenger(entity):
            variant, served = "challenger", challenger
        try:
            value, explanation = self._infer(variant, served, features, explain)
        except NotFinite:
            self._warn(f"the {variant} model {served.version} scores a non-finite number; "
                       f"the fallback answers")
            return self._fallback(event, "score_not_finite", explain)
        metrics.API_SCORES.labels(pipeline=self.name, variant=variant, outcome="ok").inc()
        metrics.API_SCORE_VALUE.labels(pipeline=self.name, variant=variant).observe(value)
        if challenger is not None and split.mode == "shadow":
            self._shadow(event, entity, features, value, champion.version, challenger)
        return Score(self.spec.event_id_of(event), entity, value, served.version, variant,
                     features, explanation, known)

    def _shadow(self, event: Record, entity: str, features: dict[str, float],
                served: float, served_version: str, challenger: Any) -> None:
        try:
            value, _ = self._infer("shadow", challenger, features, explain=False)
        except NotFinite:  # nothing to compare, and nobody is answered by it
            self._warn(f"the shadow model {challenger.version} scores a non-finite number")
            return
        metrics.API_SCORES.labels(pipeline=self.name, variant="shadow", outcome="ok").inc()
        metrics.API_SCORE_VALUE.labels(pipeline=self.name, variant="shadow").observe(value)
        metrics.SHADOW_DIFFERENCE.labels(pipeline=self.name).observe(abs(value - served))
        event_id = self.spec.event_id_of(event)
        shadow_log.info("shadow %s event=%s champion=%s:%.6g challenger=%s:%.6g",
                        self.name, event_id, served_version, served, challenger.version, value,
                        extra={"pipeline": self.name, "event_id": event_id,
                               "entity": entity_ref(entity), "model_version": served_version,
                               "challenger_version": challenger.version, "score": served,
                               "challenger_score": value})

    def _infer(self, variant: str, snap: ModelSnapshot, features: dict[str, float],
               explain: bool) -> tuple[float, tuple[Contribution, ...]]:
        return self._infer_with(variant, snap.model, snap.snapshot_id, features, explain)

    def _infer_with(self, variant: str, model: Any, snapshot_id: str,
                    features: dict[str, float], explain: bool
                    ) -> tuple[float, tuple[Contribution, ...]]:
        """The score and its explanation; :class:`NotFinite` if either has NaN or an
        infinity (cached all the same: the same snapshot scores the same)."""
        # The snapshot's unique id, not its version: a rollback may publish another model
        # under a version string served before.
        key = (self.name, variant, snapshot_id, tuple(features.items()), explain)
        hit = self.caches.inference.get(key)
        if hit is None:
            value = predict(model, self.spec.task, features)
            # Tuples of strings and floats only: the garbage collector stops tracking the
            # cached entries, so a full collection does not walk the whole cache.
            explanation = tuple(contributions(model, self.spec.task, features,
                                              self.explain_top, score=value)) if explain else ()
            hit = (value, explanation)
            self.caches.inference.put(key, hit)
        value, explanation = hit
        if not (math.isfinite(value) and all(math.isfinite(c.contribution)
                                             for c in explanation)):
            raise NotFinite(f"{variant} model {snapshot_id}: {value}")
        return hit

    def _fallback(self, event: Record, reason: str, explain: bool = True) -> Score:
        policy = self.spec.fallback
        metrics.DEGRADED.labels(pipeline=self.name, reason=reason).inc()
        if policy is None:
            raise Unavailable(f"{reason.replace('_', ' ')}, and {self.name} declares no "
                              f"fallback model")
        every = self.engine.features_for(None, event)  # what the event gives on its own
        features = {k: every[k] for k in policy.features}
        entity = self.spec.entity_of(event)
        value, version, explanation = policy.prior, "prior", ()
        if self.fallback_model is not None:
            try:
                value, explanation = self._infer_with("fallback", self.fallback_model,
                                                      self.fallback_id, features, explain)
                version = self.fallback_version
            except NotFinite:
                self._warn(f"the fallback model {self.fallback_version} scores a non-finite "
                           f"number; the prior answers")
        metrics.API_SCORES.labels(pipeline=self.name, variant="fallback",
                                    outcome="degraded").inc()
        return Score(self.spec.event_id_of(event), entity, value, version, "fallback",
                     features, explanation, None, degraded=True, degraded_reason=reason)


