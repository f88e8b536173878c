"""Running the API: ``driftline serve [--workers N]``.

One process serves with aiohttp's own runner. With N > 1 this process becomes a small
supervisor. It opens N listening sockets on the port itself, with ``SO_REUSEPORT`` (the
kernel spreads new connections over them by a hash of the connection: even when a few
keep-alive clients make all the traffic, which one shared socket was not), and forks N API
processes, one per socket. It restarts a process that dies on the same socket, which it
keeps open meanwhile: connections hashed to it wait in its queue for the replacement
instead of being refused. It stops them all on SIGTERM or SIGINT, and they exit if it dies
(``PR_SET_PDEATHSIG``). Before it binds, it checks that nothing listens on the port: the
kernel lets another ``SO_REUSEPORT`` socket of the same user share it silently.
Their Prometheus metrics are kept in ``PROMETHEUS_MULTIPROC_DIR`` files, so ``/metrics``
on any of them reports the whole pool.

HTTPS replaces HTTP when ``DRIFTLINE_API_TLS_CERT`` and ``DRIFTLINE_API_TLS_KEY`` are set.

Without tokens (``DRIFTLINE_API_TOKENS``) anyone who reaches the API may score and act as
admin, so it refuses to listen beyond loopback (:func:`check_exposure`) unless told
``--insecure`` (a container whose port only the host reaches, say).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import time

from driftline.adapters.config import Settings

log = logging.getLogger("driftline.serve")

# A process that dies this often within a minute is not restarted again: the pool stops.
MAX_RESTARTS_PER_MINUTE = 5
PR_SET_PDEATHSIG = 1


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
    from monitoring.logs import configure

    configure(settings.log_level, settings.log_format, settings.log_entities,
              settings.log_entity_key)


def check_exposure(settings: Settings, host: str, insecure: bool = False) -> None:
    """ValueError when serving on ``host`` would open the API without tokens beyond this
    machine (any address but loopback), unless ``insecure``; a malformed token setting is a
    ValueError too.

    >>> check_exposure(Settings(), "127.0.0.1")
    >>> check_exposure(Settings(), "0.0.0.0", insecure=True)
    >>> check_exposure(Settings(), "0.0.0.0")
    Traceback (most recent call last):
    ...
    ValueError: refusing to serve on 0.0.0.0 without tokens: ...
    """
    from serving.auth import is_loopback, parse_tokens

    tokens = parse_tokens(settings.api_tokens)
    if tokens.enabled or is_loopback(host):
        return
    where = host or "every interface"
    if insecure:
        log.warning("serving on %s without tokens (--insecure): whoever reaches the port may "
                    "score and act as admin", where)
        return
    raise ValueError(
        f"refusing to serve on {where} without tokens: anyone who reaches it could score "
        "and act as admin (promote, roll back, retrain, erase). Set DRIFTLINE_API_TOKENS "
        "(entries from `driftline token`), or serve on loopback (--host 127.0.0.1, "
        "DRIFTLINE_API_HOST), or pass --insecure if only trusted clients reach this address")


def serve_one(settings: Settings, host: str, port: int,
              sock: socket.socket | None = None) -> None:
    """Serve in this process until SIGTERM or SIGINT; on ``sock`` when given (a pool's)."""
    from aiohttp import web

    from serving.app import create_app

    configure_logging(settings)
    where = {"sock": sock} if sock is not None else {"host": host, "port": port}
    web.run_app(create_app(settings), ssl_context=ssl_context(settings), access_log=None,
                print=None, **where)


def serve(settings: Settings, host: str, port: int, workers: int,
          insecure: bool = False) -> int:
    """Serve with ``workers`` processes; the exit status. ValueError names a bad setting, or
    why it will not listen on ``host`` (:func:`check_exposure`)."""
    configure_logging(settings)
    # Bad settings fail here, once, not in every process; nothing is bound yet.
    check_exposure(settings, host, insecure)
    ssl_context(settings)
    if workers <= 1:
        serve_one(settings, host, port)
        return 0
    socks = _listen(host, port, workers)
    metrics_dir = settings.data_dir / "api-metrics" / str(port)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    # Set before the API processes import prometheus_client (they are forked, and this
    # process never imports the metrics).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from prometheus_client import multiprocess

    # Forked, so that they inherit the socket; this process has no threads or event loop.
    fork = multiprocessing.get_context("fork")

    def start(i: int) -> multiprocessing.Process:
        proc = fork.Process(target=_api_process, args=(settings, host, port, socks, i),
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
    for sock in socks:
        sock.close()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _api_process(settings: Settings, host: str, port: int, socks: list[socket.socket],
                 i: int) -> None:
    _die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # aiohttp installs its own handlers
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    for j, other in enumerate(socks):
        if j != i:
            other.close()  # the supervisor keeps them; this process accepts on its own
    serve_one(settings, host, port, socks[i])


def _die_with_parent() -> None:
    """Ask Linux for a SIGTERM when the supervisor dies, however it dies (no orphans left
    serving the port unmanaged)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: orphans are possible
        log.warning("cannot ask to die with the supervisor on this system")
    if os.getppid() == 1:  # the supervisor died before the request
        os._exit(0)


def _listen(host: str, port: int, n: int) -> list[socket.socket]:
    """The pool's ``n`` listening sockets. ``SO_REUSEADDR`` lets a restart bind over the last
    run's ``TIME_WAIT`` connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:  # no SO_REUSEPORT: fails if anything listens
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"error: cannot serve on {host}:{port}: {exc.strerror}") from None
    socks = []
    for _ in range(n):
        sock = socket.socket(family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        socks.append(sock)
    return socks
