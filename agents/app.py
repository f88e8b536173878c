"""The Faust application of the stream worker (``driftline worker``).

Topics are created beforehand with the admin client (:mod:`driftline.adapters.kafka_admin`),
partitioned as the pipeline's input topics are, whoever created those; Faust creates only
its own changelog topics, and the tables are given the same counts. A worker whose own
topics were left partitioned otherwise refuses to start, saying what to do, rather than
join or keep state where another worker reads. Values travel as raw JSON bytes that our
schemas validate, so a malformed record becomes a dead letter with a reason instead of a
codec crash.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import threading
from typing import Any

import faust

from agents.faust_fixes import deliver_directly, flush_waits_for_delivery
from agents.outputs import Outputs
from agents.pipeline import PipelineAgents
from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import (
    PipelinePartitions,
    partition_counts,
    refuse_other_partitioning,
)
from driftline.adapters.kafka_clients import faust_credentials
from monitoring.metrics import exposition
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics

# Faust's built-in web pages, each off (the worker answers 404 there).
WEB_PAGES_OFF = {"web_tables_enabled": False, "web_router_enabled": False,
                 "web_stats_enabled": False, "web_graph_enabled": False,
                 "web_metrics_enabled": False}


def _dump_tasks() -> None:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=out)
    logging.getLogger(__name__).warning("asyncio tasks:\n%s", out.getvalue())


def create_app(settings: Settings, pipelines: list[str] | None = None) -> faust.App:
    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir / "worker" / settings.app_id),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        # Faust binds ``web_bind`` (all interfaces unless set) and uses ``web_host`` only
        # for its own URLs: both are the worker host, loopback unless configured.
        web_bind=settings.worker_host,
        web_host=settings.worker_host,
        web_port=settings.worker_port,
        web_in_thread=False,
        # Faust's own pages off: /table/... served any key's value (a card's amounts,
        # merchants, event ids) to whoever reached the port; /router/... the cluster's
        # layout. Only the routes below (/metrics, /healthz) are served, and Faust's "/".
        **WEB_PAGES_OFF,
        producer_acks=-1,
        broker_commit_interval=1.0,
        # A crashed worker's partitions move to a live one after 10 s, not Faust's 60.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
    )
    flush_waits_for_delivery(app)
    deliver_directly(app)
    outputs = Outputs(settings)
    existing = partition_counts(settings)
    app.driftline_pipelines = []
    for name in pipelines or list(PIPELINES):
        spec = PIPELINES[name]
        partitions = PipelinePartitions.follow(
            existing, PipelineTopics.for_spec(spec, settings.namespace), settings.partitions)
        app.driftline_pipelines.append(
            PipelineAgents(app, settings, spec, outputs, partitions))
    refuse_other_partitioning(settings, existing, {
        name: needed for agents in app.driftline_pipelines
        for name, needed in agents.co_partitioned.items()})

    @app.on_before_shutdown.connect
    async def close_outputs(app, **_) -> None:
        outputs.close()

    @app.task
    async def dump_tasks_on_sigusr1() -> None:
        # `kill -USR1 <pid>` logs what every asyncio task is waiting on: the first thing
        # to look at when a worker seems stuck.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)

    @app.page("/metrics")
    async def metrics(web, request):
        body, content_type = exposition()
        return web.bytes(body, content_type=content_type.split(";")[0])

    @app.page("/healthz")
    async def healthz(web, request):
        # Ready once the tables are recovered and the agents consume.
        if not app.tables.recovery.completed.is_set():
            return web.json({"status": "recovering"}, status=503)
        return web.json({"status": "ok"})

    return app


class BoundedWorker(faust.Worker):
    """Faust's worker, whose stop on a signal is bounded: a batch held while a store does
    not answer (:class:`agents.consume.BatchReader` retries it) would keep Faust's
    shutdown waiting for it for ever. Past ``shutdown_seconds`` the process exits without
    committing the held records: they are handled again at the next start, their outputs
    sent again (at least once), their state not applied twice."""

    def __init__(self, *args: Any, shutdown_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shutdown_seconds = shutdown_seconds

    def _schedule_shutdown(self, signal: Any) -> None:
        timer = threading.Timer(self.shutdown_seconds, _exit_unclean, (self.shutdown_seconds,))
        timer.daemon = True
        timer.start()
        super()._schedule_shutdown(signal)


def _exit_unclean(seconds: float) -> None:
    logging.getLogger(__name__).error(
        "not stopped cleanly after %.0fs (a batch held while a store is down?): exiting "
        "without committing it; the next start handles it again", seconds)
    logging.shutdown()
    os._exit(1)
