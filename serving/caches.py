"""The API's two caches, bounded and counted (``driftline_api_cache_lookups_total``).

* ``features``: an entity's window state, read from Redis, for a short TTL. A cached
  state can miss the events of its last TTL; that staleness is the price of not asking
  Redis for every request, and ``DRIFTLINE_FEATURE_CACHE_TTL_SECONDS`` sets it (0: off).
* ``inference``: a score and its explanation, keyed on the variant, the model version
  and the feature vector. The same model version given the same features gives the same
  score, so a hit is never stale: a new event of the entity changes its features, and a hot
  swap changes the version.

Both are cachetools caches (LRU, with a TTL for features); the API is one event loop per
process, so they need no lock.

>>> cache = CountingCache("inference", size=2)
>>> cache.get(("v1", (("a", 1.0),)))
>>> cache.put(("v1", (("a", 1.0),)), 0.3)
>>> cache.get(("v1", (("a", 1.0),)))
0.3
>>> CountingCache("features", size=0).put("k", 1)  # size 0: off, nothing kept
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from cachetools import LRUCache, TTLCache

from monitoring import metrics

MISSING = None  # what get() returns on a miss; cached values are never None here


class CountingCache:
    """A bounded cache whose hits and misses are counted; ``size=0`` disables it."""

    def __init__(self, name: str, size: int, ttl: float | None = None) -> None:
        self.name = name
        self.enabled = size > 0 and (ttl is None or ttl > 0)
        self._cache = (TTLCache(size, ttl) if ttl is not None else LRUCache(size)) \
            if self.enabled else None
        self._hits = metrics.CACHE_LOOKUPS.labels(cache=name, result="hit")
        self._misses = metrics.CACHE_LOOKUPS.labels(cache=name, result="miss")

    def get(self, key: Hashable) -> Any:
        if self._cache is None:
            return MISSING
        value = self._cache.get(key, MISSING)
        (self._misses if value is MISSING else self._hits).inc()
        return value

    def put(self, key: Hashable, value: Any) -> None:
        if self._cache is not None:
            self._cache[key] = value

    def pop(self, key: Hashable) -> None:
        if self._cache is not None:
            self._cache.pop(key, None)
