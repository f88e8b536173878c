"""Running the API: ``driftline serve [--workers N]``.

One process serves with aiohttp's own runner. With N > 1 this process becomes a small
supervisor: it starts N API processes that all listen on the same port (``SO_REUSEPORT``:
the kernel spreads connections over them), restarts one that dies, and stops them all on
SIGTERM or SIGINT. Their Prometheus metrics are kept in ``PROMETHEUS_MULTIPROC_DIR``
files, so ``/metrics`` on any of them reports the whole pool.

HTTPS replaces HTTP when ``DRIFTLINE_API_TLS_CERT`` and ``DRIFTLINE_API_TLS_KEY`` are set.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import time

from driftline.config import Settings

log = logging.getLogger("driftline.serve")

# A process that dies this often within a minute is not restarted again: the pool stops.
MAX_RESTARTS_PER_MINUTE = 5


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain HTTP; ValueError on half a setting."""
    cert, key = settings.api_tls_cert, settings.api_tls_key
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("DRIFTLINE_API_TLS_CERT and DRIFTLINE_API_TLS_KEY are set together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s")


def serve_one(settings: Settings, host: str, port: int, reuse_port: bool = False) -> None:
    """Serve in this process until SIGTERM or SIGINT."""
    from aiohttp import web

    from serving.app import create_app

    configure_logging(settings)
    web.run_app(create_app(settings), host=host, port=port, ssl_context=ssl_context(settings),
                reuse_port=reuse_port, access_log=None, print=None)


def serve(settings: Settings, host: str, port: int, workers: int) -> int:
    """Serve with ``workers`` processes; the exit status."""
    configure_logging(settings)
    ssl_context(settings)  # a bad certificate fails here, once, not in every process
    if workers <= 1:
        serve_one(settings, host, port)
        return 0
    _check_port_free(host, port)
    metrics_dir = settings.data_dir / "api-metrics" / str(port)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # inherited by the processes
    from prometheus_client import multiprocess

    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited loop

    def start(i: int) -> multiprocessing.Process:
        proc = spawn.Process(target=serve_one, args=(settings, host, port, True),
                             name=f"driftline-api-{i}")
        proc.start()
        return proc

    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pool = [start(i) for i in range(workers)]
    log.info("serving on %s:%d with %d processes: %s", host, port, workers,
             [p.pid for p in pool])
    restarts: list[float] = []
    status = 0
    while not stopping:
        time.sleep(0.5)
        for i, proc in enumerate(pool):
            if proc.is_alive() or stopping:
                continue
            multiprocess.mark_process_dead(proc.pid)
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > MAX_RESTARTS_PER_MINUTE:
                log.error("API processes keep dying (%d restarts in a minute); stopping",
                          len(restarts) - 1)
                stopping, status = True, 1
                break
            log.warning("API process %d exited with %s; restarting it", proc.pid,
                        proc.exitcode)
            pool[i] = start(i)
    for proc in pool:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)  # aiohttp finishes the requests in flight
    for proc in pool:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return status


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another server holds: with SO_REUSEPORT, the pool would silently
    share its traffic with that server."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"error: cannot serve on {host}:{port}: {exc.strerror}") from None
