"""Champion and challenger side by side: which entities the challenger serves.

A :class:`TrafficSplit` is set by an admin (``PUT /v1/models/<p>/traffic`` or
``driftline models traffic``) and read by every API process. In ``split`` mode the
challenger answers for ``percent`` of the entities: a canary at a few percent, an A/B test
at fifty. In ``shadow`` mode the champion answers every request and the challenger scores
it too, for the metrics and the log only.

The choice hashes the entity, not the request, so an entity sees one model for the whole
experiment (its scores stay comparable over time), whichever process answers; the
experiment's own id salts the hash, so each new experiment draws a new sample.
:class:`TrafficSplit` is pure; :func:`set_split`, the one way a split is made or ended,
writes it to Redis with the challenger's model.

>>> split = TrafficSplit(mode="split", challenger=3, percent=50.0, experiment="e1")
>>> split.serves_challenger("card-1") == split.serves_challenger("card-1")
True
>>> share = sum(split.serves_challenger(f"card-{i}") for i in range(10_000)) / 10_000
>>> 0.48 < share < 0.52
True
>>> TrafficSplit(mode="shadow", challenger=3, percent=100.0).serves_challenger("card-1")
False
>>> TrafficSplit(mode="split", challenger=3, percent=0.0).serves_challenger("card-1")
False
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from driftline.adapters.config import Settings
from driftline.adapters.stores import RedisKeys, TrafficStore, connect
from driftline.errors import Invalid
from streams.schemas import field_errors

BUCKETS = 10_000  # percent resolution: 0.01


class TrafficRequest(BaseModel):
    """The body of ``PUT /v1/models/<p>/traffic``: an experiment as an admin asks for it."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    mode: Literal["split", "shadow"]
    challenger: int = Field(ge=1, lt=2**31, description="the registry version to compare")
    percent: float = Field(default=10.0, ge=0, le=100, allow_inf_nan=False,
                           description="split mode: the share of entities the challenger "
                                       "serves")


class TrafficSplit(TrafficRequest):
    """One experiment as it runs: the request and the id that salts its entity hash."""

    experiment: str = Field(default="", max_length=128)

    def serves_challenger(self, entity: str) -> bool:
        """Whether the challenger answers for ``entity`` (never in shadow mode)."""
        if self.mode != "split":
            return False
        digest = hashlib.blake2b(f"{self.experiment}\0{entity}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big") % BUCKETS < self.percent * BUCKETS / 100

    @property
    def version(self) -> str:
        """The challenger's model version as scores report it (a champion's is ``vN.M``)."""
        return f"v{self.challenger}"


async def set_split(settings: Settings, registry: Any, pipeline: str, mode: str,
                    challenger: int | None = None, percent: float = 10.0,
                    client: Any = None) -> TrafficSplit | None:
    """Serve registry version ``challenger`` of ``pipeline`` in ``mode`` (``split`` or
    ``shadow``), or end the split (``off``). Every API process picks it up within
    ``DRIFTLINE_MODEL_REFRESH_SECONDS``. Raises Invalid naming a bad field, NotFound for
    an unknown registry version."""
    own = client is None
    client = connect(settings) if own else client
    store = TrafficStore(client, RedisKeys(settings.redis_prefix, pipeline))
    try:
        if mode == "off":
            await store.clear()
            return None
        try:
            split = TrafficSplit(mode=mode, challenger=challenger, percent=percent,
                                 experiment=uuid.uuid4().hex[:12])
        except ValidationError as exc:
            raise Invalid(field_errors(exc)) from None
        model = await asyncio.to_thread(registry.load, pipeline, split.challenger)
        await store.set(split.model_dump(), model, split.version)
        return split
    finally:
        if own:
            await client.aclose()
