"""The dashboard's I/O: the :class:`Sampler` that every API process runs in the background
(started by the application's cleanup context), feeding a :class:`Dashboard`.

Every :data:`SAMPLE_SECONDS` it reads

* the stream worker's ``/metrics`` (``DRIFTLINE_WORKER_HOST:DRIFTLINE_WORKER_PORT``):
  events consumed and labels learned per pipeline, drift detections and promotions; a
  worker that does not answer within :data:`WORKER_TIMEOUT_SECONDS` leaves a gap, and the
  page says it is down;
* the API's own metrics, as ``/metrics`` exposes them (:func:`monitoring.metrics.exposition`:
  under ``driftline serve --workers N``, the sum over the pool, so whichever process
  answers reports the whole API);
* each pipeline's learner hash in Redis: the model revision, the labels learned, and the
  rolling prequential metric of the current revision (the pipeline's first metric).

When nobody has polled the page for :data:`WATCHED_SECONDS`, it samples every
:data:`IDLE_SECONDS`, and only the learners' state in Redis: parsing two expositions holds
the GIL for tens of milliseconds, which showed in scoring's p99 under load.

The history lives in the process's memory: a new process starts an empty chart, and under a
pool each process keeps its own (the numbers agree; the page keeps to the process its
connection reaches). Kept apart from :mod:`serving.dashboard.view` so that the logic is
tested without sockets, and this module holds only the reading and its failure modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from driftline.adapters.config import Settings
from driftline.adapters.stores import RedisKeys
from monitoring import metrics
from monitoring.scrape import Scrape, parse
from serving.dashboard.view import SAMPLE_SECONDS, Dashboard

log = logging.getLogger(__name__)

# Nobody has polled the page for WATCHED_SECONDS: sample every IDLE_SECONDS, and only the
# learners' state in Redis (the prequential history and promotions go on; throughput,
# latency and drift markers resume, averaged over the gap, when someone looks again).
IDLE_SECONDS = 10.0
WATCHED_SECONDS = 60.0
WORKER_TIMEOUT_SECONDS = 1.5   # a slower worker /metrics counts as down for that sample


class Sampler:
    """Feeds a :class:`Dashboard` every ``interval`` seconds in the background, from the
    worker's /metrics, this API's metrics and the learner hashes in Redis."""

    LEARNER_FIELDS = ("version", "revision", "updates", "metrics", "published_at")

    def __init__(self, settings: Settings, redis: Any, scorers: Mapping[str, Any],
                 interval: float = SAMPLE_SECONDS) -> None:
        self.redis = redis
        self.scorers = scorers
        self.interval = interval
        self.worker_url = settings.worker_metrics_url
        self.keys = {name: RedisKeys(settings.redis_prefix, name) for name in scorers}
        self.dashboard = Dashboard(
            {name: (s.spec.task, s.spec.metrics[0]) for name, s in scorers.items()},
            sample_seconds=interval)
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None
        self._watched_at = -WATCHED_SECONDS  # monotonic time of the last poll
        self._wake = asyncio.Event()

    def start(self) -> Sampler:
        self._task = asyncio.create_task(self._run(), name="dashboard-sampler")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def data(self, since: float | None) -> dict[str, Any]:
        if not self._watched():
            self._wake.set()  # someone looks again: sample now, and often
        self._watched_at = time.monotonic()
        serving = {name: s.serving_version for name, s in self.scorers.items()}
        body = self.dashboard.data(since, serving)
        body["worker"]["url"] = self.worker_url
        body["process"] = {"pid": os.getpid(),
                           "pool": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))}
        return body

    async def _run(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WORKER_TIMEOUT_SECONDS))
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.sample()
            except Exception:  # noqa: BLE001 - a chart with a gap, never a dead sampler
                log.warning("dashboard sample failed", exc_info=True)
            next_at += self.interval if self._watched() else IDLE_SECONDS
            next_at = max(next_at, loop.time())  # after a long stall, no burst of samples
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), next_at - loop.time())
            next_at = min(next_at, loop.time())

    def _watched(self) -> bool:
        return time.monotonic() - self._watched_at < WATCHED_SECONDS

    async def sample(self) -> None:
        if not self._watched():
            # Nobody looks: the learners' state only (one Redis round trip). Parsing two
            # expositions holds the GIL for tens of milliseconds, which showed in scoring's
            # p99 under load; the rates of the next watched sample span the gap.
            self.dashboard.observe(time.time(), None, None, await self._learners(),
                                   metrics_read=False)
            return
        worker_text, learners = await asyncio.gather(self._worker_metrics(),
                                                     self._learners())
        # Parsing and the pool's exposition (files, under --workers N) stay off the loop.
        worker, api = await asyncio.to_thread(self._parse, worker_text)
        self.dashboard.observe(time.time(), worker, api, learners)

    @staticmethod
    def _parse(worker_text: str | None) -> tuple[Scrape | None, Scrape]:
        api = parse(metrics.exposition()[0].decode())
        return (parse(worker_text) if worker_text is not None else None), api

    async def _worker_metrics(self) -> str | None:
        d = self.dashboard
        try:
            async with self._session.get(self.worker_url) as resp:
                resp.raise_for_status()
                text = await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            if d.worker_error is None:
                log.warning("dashboard: the worker's metrics (%s) do not answer: %s",
                            self.worker_url, reason)
            d.worker_error = reason
            return None
        if d.worker_error is not None:
            log.info("dashboard: the worker's metrics answer again")
        d.worker_error = None
        return text

    async def _learners(self) -> dict[str, dict[str, str]] | None:
        d = self.dashboard
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys in self.keys.values():
                    pipe.hmget(keys.learner, list(self.LEARNER_FIELDS))
                rows = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis down: a gap in the chart
            d.redis_error = f"Redis unavailable: {type(exc).__name__}"
            return None
        d.redis_error = None
        out = {}
        for name, row in zip(self.keys, rows, strict=True):
            if row and row[0] is not None:
                out[name] = {f: (v.decode() if v is not None else None)
                             for f, v in zip(self.LEARNER_FIELDS, row, strict=True)}
        return out
