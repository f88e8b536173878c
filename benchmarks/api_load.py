"""The scoring API under load: throughput and latency of single and batch scoring, with and
without its caches, on loopback.

    python benchmarks/api_load.py            # the full run, about 5 minutes
    python benchmarks/api_load.py --quick    # about 1 minute: 1 process, 3 s scenarios

Setup, without Kafka or the stream worker (:mod:`driftline.tools.seeding`): ``--history`` events
of the fraud generator run through the worker's own feature engine and learner in this
process (each event scored before its label is learned); every card's window state is
written to Redis and the learned model, with its fallback, is published as the champion,
all in a scratch namespace removed at the end. Then, for each ``--workers`` count,
``driftline serve --workers N`` runs as a child process twice: with the default caches and
with both off (``DRIFTLINE_FEATURE_CACHE_SIZE=0``, ``DRIFTLINE_INFERENCE_CACHE_SIZE=0``).
Each server gets the same scenarios, with the same requests in the same order, each with a
bearer token (authentication is on the production path):

* ``healthz``: ``GET /healthz``, the floor cost of one aiohttp request on this machine.
  Closed-loop throughputs are also given as a ratio to its throughput, and open-loop p99s
  to its p99 at the same offered rate, both on the same server in the same run: ratios
  hold better than absolute figures on a noisy machine;
* ``single``: ``POST /v1/score/fraud``, one event of a known card (a fresh event id, an
  amount and a merchant like the card's own, event times just after the history);
* ``batch``: ``POST /v1/score/fraud:batch`` with ``--batch`` such events;
* ``hot``: single scoring of only ``--hot-cards`` cards, ``--hot-repeat`` of the requests
  exact repeats of earlier ones: the traffic the caches are for.

Two load modes, each bounded by ``--seconds`` and ``--max-requests``:

* **closed loop**: ``--concurrency`` clients send back to back: the most the server does
  (requests/s, and events/s for batches) and the latency at that load;
* **open loop**: requests leave on a schedule, ``--rate`` per second (``--batch-rate`` for
  batches), whether or not earlier ones were answered, and latency runs from each request's
  *scheduled* time, so a stalled server is not hidden by a client that waited for it
  (coordinated omission); ``send_lag_ms`` in the JSON is how late the generator sent them.

Latency percentiles are exact, from every successful response (numpy); the generator does
not collect garbage while it measures (its own pauses would count as the server's). The
load generator is this process (one event loop, one aiohttp session per scenario): on a
2-core machine it competes with the API processes and Redis for the CPU, so every scenario
reports the cores each used (from /proc), and ``other``: the rest of the machine's busy
time (Kafka, Milvus, whatever else runs). The two servers of a process count run side by
side and take each scenario in turn, the order alternating, so that a slow spell of the
machine weighs on both alike. The stack is shared too: when Redis is restarted, paused or
unreachable under a scoring scenario (a PING every 50 ms, Redis's pid and the API's
``features_unavailable`` count tell), the scenario is measured again on both servers with
fresh events, up to ``--attempts`` times; a row still disturbed says so.

Results are printed and written to ``benchmarks/results/api_load.json``
(``api_load-quick.json`` with ``--quick``, so a quick run never replaces a full one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
import urllib.request
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from redis.exceptions import RedisError

from driftline.adapters.config import Settings
from driftline.adapters.stores import connect
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import ServiceProcess, api_process, api_url
from driftline.tools.seeding import Seeded, seed
from driftline.tools.stack import LocalStack
from monitoring.scrape import Scrape, scrape
from serving.auth import new_token
from streams.pipelines import PIPELINES

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
PIPELINE = "fraud"
CACHES_OFF = {"feature_cache_size": 0, "inference_cache_size": 0}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# --quick: what it changes, where the option was not given.
QUICK = {"workers": [1], "seconds": 3.0, "warmup": 0.5, "history": 5_000}
FULL = {"workers": [1, 2], "seconds": 6.0, "warmup": 1.0, "history": 20_000}


# ---- the requests --------------------------------------------------------------------------

@dataclass(frozen=True)
class Card:
    card_id: str
    merchants: tuple[str, ...]
    amounts: tuple[float, ...]


def cards_of(seeded: Seeded) -> list[Card]:
    """Each known card with the merchants and amounts of its history."""
    merchants, amounts = defaultdict(list), defaultdict(list)
    for event in seeded.events:
        merchants[event.card_id].append(event.merchant_id)
        amounts[event.card_id].append(event.amount)
    return [Card(c, tuple(merchants[c]), tuple(amounts[c])) for c in sorted(seeded.states)]


class Workload:
    """Fresh transactions of known cards. Event ``i`` depends only on the workload's name
    and ``i``, so every server is sent the same events in the same order; a ``repeat``
    share of them are exact copies of an earlier one (same id, same features)."""

    def __init__(self, name: str, cards: list[Card], start: float, repeat: float) -> None:
        self.name = name
        self.cards = cards
        self.start = start
        self.repeat = repeat
        self.rng = random.Random(zlib.crc32(name.encode()))
        self.made: list[dict] = []

    def event(self, i: int) -> dict:
        while len(self.made) <= i:  # made in order: the sequence never depends on timing
            self.made.append(self._next(len(self.made)))
        return self.made[i]

    def _next(self, i: int) -> dict:
        rng = self.rng
        if self.made and rng.random() < self.repeat:
            return self.made[rng.randrange(len(self.made))]
        card = rng.choice(self.cards)
        merchant = (rng.choice(card.merchants) if rng.random() < 0.9
                    else f"m{rng.randrange(500):04d}")
        amount = rng.choice(card.amounts) * math.exp(rng.gauss(0.0, 0.35))
        return {"event_id": f"load-{self.name}-{i}", "card_id": card.card_id,
                "merchant_id": merchant, "amount": round(max(amount, 0.01), 2),
                "ts": round(self.start + i * 0.001, 3)}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None = None
    events: int = 0  # events scored; 0: not a scoring request


@dataclass(frozen=True)
class Scenario:
    name: str          # healthz, single, batch, hot
    mode: str          # closed or open
    rate: float = 0.0  # open loop: requests per second

    @property
    def label(self) -> str:
        return f"{self.name} {self.mode}" + (f" @{self.rate:g}/s" if self.mode == "open" else "")


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    return [Scenario("healthz", "closed"), Scenario("healthz", "open", args.rate),
            Scenario("single", "closed"), Scenario("single", "open", args.rate),
            Scenario("batch", "closed"), Scenario("batch", "open", args.batch_rate),
            Scenario("hot", "closed"), Scenario("hot", "open", args.rate)]


class Requests:
    """The request sequence of each scenario (and of its warm-up), shared by every server."""

    def __init__(self, cards: list[Card], start: float, args: argparse.Namespace) -> None:
        self.cards = cards
        self.hot = random.Random(0).sample(cards, min(args.hot_cards, len(cards)))
        self.start = start
        self.args = args
        self.workloads: dict[str, Workload] = {}

    def of(self, scenario: Scenario, attempt: int = 1,
           warmup: bool = False) -> Callable[[int], Request]:
        """Request ``i`` of ``scenario``; another ``attempt`` has events of its own, so
        that the server's caches know none of them."""
        if scenario.name == "healthz":
            return lambda i: Request("GET", "/healthz")
        key = f"{'warmup-' if warmup else ''}{scenario.name}-{scenario.mode}-{attempt}"
        if key not in self.workloads:
            hot = scenario.name == "hot"
            self.workloads[key] = Workload(key, self.hot if hot else self.cards, self.start,
                                           self.args.hot_repeat if hot else self.args.repeat)
        w = self.workloads[key]
        if scenario.name == "batch":
            n = self.args.batch
            return lambda i: Request("POST", f"/v1/score/{PIPELINE}:batch", json.dumps(
                {"events": [w.event(i * n + k) for k in range(n)]}).encode(), n)
        return lambda i: Request("POST", f"/v1/score/{PIPELINE}",
                                 json.dumps(w.event(i)).encode(), 1)


# ---- sending and recording -----------------------------------------------------------------

@dataclass
class Recorder:
    """What came back: the latency of every 200, errors by kind (with a few bodies), and
    for scores how many were degraded or of an entity the API did not know."""

    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    events: int = 0
    degraded: int = 0
    unknown: int = 0

    async def send(self, session: aiohttp.ClientSession, request: Request,
                   scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        self.lags.append(loop.time() - scheduled)
        try:
            async with session.request(request.method, request.path,
                                       data=request.body) as resp:
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._error(type(exc).__name__, repr(exc))
            return
        done = loop.time()
        if resp.status != 200:
            self._error(f"HTTP {resp.status}", body[:300].decode(errors="replace"))
            return
        self.latencies.append(done - scheduled)
        if request.events:
            payload = json.loads(body)
            scores = payload.get("results", [payload])
            self.events += len(scores)
            self.degraded += sum(bool(s["degraded"]) for s in scores)
            self.unknown += sum(not s["degraded"] and s.get("entity_known") is not True
                                for s in scores)

    def _error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(f"{kind}: {detail}")


async def closed_loop(session: aiohttp.ClientSession, request: Callable[[int], Request],
                      recorder: Recorder, clients: int, seconds: float,
                      max_requests: int) -> float:
    """``clients`` senders back to back until ``seconds`` or ``max_requests``; the time
    taken."""
    loop = asyncio.get_running_loop()
    counter = itertools.count()
    started = loop.time()
    end = started + seconds

    async def client() -> None:
        while loop.time() < end and (i := next(counter)) < max_requests:
            await recorder.send(session, request(i), loop.time())

    await asyncio.gather(*(client() for _ in range(clients)))
    return loop.time() - started


async def open_loop(session: aiohttp.ClientSession, request: Callable[[int], Request],
                    recorder: Recorder, rate: float, seconds: float,
                    max_requests: int) -> float:
    """Request ``i`` sent at ``start + i / rate`` whatever came back before; the time from
    the first scheduled send to the last answer."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.01
    in_flight = []
    for i in range(min(int(rate * seconds), max_requests)):
        at = start + i / rate
        if (delay := at - loop.time()) > 0:
            await asyncio.sleep(delay)
        in_flight.append(asyncio.create_task(recorder.send(session, request(i), at)))
    await asyncio.gather(*in_flight)
    return loop.time() - start


# ---- CPU, from /proc -------------------------------------------------------------------------

def cpu_ticks(pid: int) -> int:
    """User and system time of ``pid`` (every thread), in clock ticks; 0 once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rpartition(")")[2].split()  # fields from the 3rd on: utime is the 14th
    return int(fields[11]) + int(fields[12])


def serving_processes(root: int, workers: int) -> list[int]:
    """The processes that answer requests: ``driftline serve`` itself, or with several
    workers the ones its supervisor started (not the supervisor, nor a resource tracker)."""
    if workers == 1:
        return [root]
    return [p for p in process_tree(root)[1:]
            if b"resource_tracker" not in _read(f"/proc/{p}/cmdline")]


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (the API's supervisor and its processes)."""
    children = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            children[int(stat.read_text().rpartition(")")[2].split()[1])].append(
                int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def machine_busy_ticks() -> int:
    """Busy time of all CPUs (user, nice, system, irq, softirq, steal)."""
    cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(cpu) - cpu[3] - cpu[4]  # minus idle and iowait


@dataclass
class CpuSample:
    at: float
    ticks: dict[int, int]
    machine: int


def cpu_sample(pids: list[int]) -> CpuSample:
    return CpuSample(time.monotonic(), {p: cpu_ticks(p) for p in pids}, machine_busy_ticks())


def cores_used(a: CpuSample, b: CpuSample, generator: int, api: list[int],
               serving: list[int], redis: int | None) -> dict:
    """Cores used between two samples, by the generator, the API (and each of its serving
    processes), Redis and the rest."""
    def cores(pids) -> float:
        return sum(b.ticks[p] - a.ticks[p] for p in pids) / CLOCK_TICKS / (b.at - a.at)

    used = {"generator": cores([generator]), "api": cores(api),
            "redis": cores([redis]) if redis else 0.0}
    machine = (b.machine - a.machine) / CLOCK_TICKS / (b.at - a.at)
    used["other"] = max(0.0, machine - sum(used.values()))
    used["api_per_process"] = [round(cores([p]), 2) for p in serving]
    return {k: v if isinstance(v, list) else round(v, 3) for k, v in used.items()}


# ---- one server ----------------------------------------------------------------------------

@dataclass
class Server:
    settings: Settings
    process: ServiceProcess
    workers: int
    caches: bool
    token: str

    @property
    def url(self) -> str:
        return api_url(self.settings)


@contextlib.contextmanager
def api_servers(s: Settings, workers: int, version: str) -> Iterator[list[Server]]:
    """Two servers of ``workers`` processes side by side: caches on, caches off."""
    with contextlib.ExitStack() as running:
        yield [running.enter_context(api_server(s, workers, caches, version))
               for caches in (True, False)]


@contextlib.contextmanager
def api_server(s: Settings, workers: int, caches: bool, version: str) -> Iterator[Server]:
    token, entry = new_token("api-load", "admin")
    settings = s.with_overrides(api_port=free_port(), api_tokens=entry,
                                **({} if caches else CACHES_OFF))
    name = f"api-{workers}w-caches-{'on' if caches else 'off'}"
    log_dir = s.data_dir / "logs" / s.namespace / name
    process = api_process(settings, log_dir, workers=workers).start()
    try:
        wait_serving(api_url(settings), version)
        yield Server(settings, process, workers, caches, token)
    finally:
        process.stop()


def check_alive(server: Server) -> None:
    code = server.process.proc.poll()
    if code is not None:
        raise RuntimeError(f"the API ({server.workers} process(es), caches "
                           f"{'on' if server.caches else 'off'}) exited with {code}; see "
                           f"{server.process.log_path}")


def wait_serving(url: str, version: str, timeout: float = 60.0) -> None:
    """Until 10 answers in a row (new connections: any of the processes) serve
    ``version``."""
    deadline, in_a_row = time.monotonic() + timeout, 0
    while in_a_row < 10:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API at {url} does not serve model {version}")
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            serving = json.loads(resp.read())["models"].get(PIPELINE)
        in_a_row = in_a_row + 1 if serving == version else 0
        if serving != version:
            time.sleep(0.2)


def log_problems(path: Path) -> list[str]:
    """The API log's warnings, errors and tracebacks."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if _is_problem(line)]


def _is_problem(line: str) -> bool:
    """A warning, error or traceback line, in either log format (DRIFTLINE_LOG_FORMAT):
    JSON lines carry the level as a field, which the words of a text line never match."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            return record.get("level") in ("WARNING", "ERROR", "CRITICAL") \
                or "exc_info" in record
    return any(word in line for word in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))


async def run_servers(servers: list[Server], requests: Requests, args: argparse.Namespace,
                      stack: LocalStack) -> list[dict]:
    """Every scenario on each server in turn, back to back, the order alternating (on, off;
    off, on; ...) so that a slow spell of the machine weighs on both alike. When Redis
    was restarted, paused or unreachable under a scoring scenario (another process's doing:
    the stack is shared), or a process of the API was replaced, both servers are measured
    again with fresh events, up to ``--attempts`` times."""
    rows = []
    for i, scenario in enumerate(scenarios(args)):
        for attempt in range(1, args.attempts + 1):
            pair = [await measure(server, scenario, requests, args, stack, attempt)
                    for server in (servers if i % 2 == 0 else servers[::-1])]
            disturbed = [r["disturbed"] for r in pair if r["disturbed"]]
            if not disturbed or attempt == args.attempts:
                break
            print(f"     {scenario.label}: {disturbed[0]}; measuring both servers again "
                  "with fresh events", flush=True)
        for row in pair:
            row["order"], row["attempt"] = i, attempt
            rows.append(row)
            print_row(row, flush=True)
    return rows


class RedisProbe:
    """PINGs Redis every 50 ms during a scenario and keeps the slowest answer and the
    failures: the shared Redis may be paused (``CLIENT PAUSE``) or restarted by another
    process, which no setting of the API explains."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slowest = 0.0
        self.failures = 0

    async def __aenter__(self) -> RedisProbe:
        self.client = connect(self.settings)
        self.running = True
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        # Stopped by a flag, not cancelled: redis-py may swallow a cancellation that lands
        # in a PING (one did, while Redis was paused), and the probe would never end.
        self.running = False
        await self.task
        await self.client.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            started = loop.time()
            try:
                await self.client.ping()  # at most the client's socket timeout (5 s)
            except (RedisError, OSError):
                self.failures += 1
            self.slowest = max(self.slowest, loop.time() - started)
            await asyncio.sleep(0.05)

    def disturbance(self, threshold: float = 0.25) -> str | None:
        if self.failures:
            return f"Redis unreachable ({self.failures} PINGs failed)"
        if self.slowest > threshold:
            return f"Redis stalled (a PING took {1000 * self.slowest:.0f} ms)"
        return None


async def measure(server: Server, scenario: Scenario, requests: Requests,
                  args: argparse.Namespace, stack: LocalStack, attempt: int = 1) -> dict:
    check_alive(server)
    closed = scenario.mode == "closed"
    clients = args.batch_concurrency if scenario.name == "batch" else args.concurrency
    connector = aiohttp.TCPConnector(limit=clients if closed else args.connections)
    async with aiohttp.ClientSession(
            base_url=server.url, connector=connector,
            headers={"Authorization": f"Bearer {server.token}",
                     "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=args.timeout)) as session:
        await closed_loop(session, requests.of(scenario, attempt, warmup=True), Recorder(),
                          min(clients, 4), args.warmup, args.max_requests)
        before = metrics_of(server)
        redis_pid = stack.pid("redis")
        api = process_tree(server.process.proc.pid)
        serving = serving_processes(server.process.proc.pid, server.workers)
        pids = [os.getpid(), *api, *([redis_pid] if redis_pid else [])]
        recorder = Recorder()
        send = requests.of(scenario, attempt)
        async with RedisProbe(server.settings) as probe, gc_paused():
            cpu_before = cpu_sample(pids)
            if closed:
                elapsed = await closed_loop(session, send, recorder, clients, args.seconds,
                                            args.max_requests)
            else:
                elapsed = await open_loop(session, send, recorder, scenario.rate,
                                          args.seconds, args.max_requests)
            cpu_after = cpu_sample(pids)
        redis_restarted = stack.pid("redis") != redis_pid
        cpu = cores_used(cpu_before, cpu_after, os.getpid(), api,
                         [p for p in serving if p in api],
                         None if redis_restarted else redis_pid)
        replaced = sorted(set(api) - set(process_tree(server.process.proc.pid)))
        after = metrics_of(server)
    row = summary(server, scenario, recorder, elapsed, cpu, before, after)
    row["clients"] = clients if closed else None
    if closed:
        row["label"] = f"{scenario.name} closed x{clients}"
    row["redis_slowest_ping_ms"] = round(1000 * probe.slowest, 1)
    unavailable = row["degraded_by_reason"].get("features_unavailable", 0)
    row["disturbed"] = (
        f"API processes {replaced} gone" if replaced else None if scenario.name == "healthz"
        else "Redis restarted" if redis_restarted else probe.disturbance()
        or (f"{unavailable:.0f} scores without Redis" if unavailable else None))
    return row


@contextlib.asynccontextmanager
async def gc_paused():
    """No garbage collection in the generator while it measures: its own full collections
    (0.1 to 0.2 s here) would be counted as the server's latency. A scenario's garbage is
    collected once it is over."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def metrics_of(server: Server, tries: int = 10) -> Scrape:
    """The server's /metrics, waiting a little for a process of the pool being replaced."""
    for _ in range(tries - 1):
        try:
            return scrape(f"{server.url}/metrics")
        except OSError:
            check_alive(server)
            time.sleep(0.5)
    return scrape(f"{server.url}/metrics")


def degraded_by_reason(before: Scrape, after: Scrape) -> dict[str, float]:
    name = "driftline_api_degraded_total"
    reasons = {labels["reason"] for labels, _ in after.get(name, [])
               if labels.get("pipeline") == PIPELINE}
    counts = {r: after.value(name, pipeline=PIPELINE, reason=r)
              - before.value(name, pipeline=PIPELINE, reason=r) for r in sorted(reasons)}
    return {r: n for r, n in counts.items() if n}


def hit_ratio(before: Scrape, after: Scrape, cache: str) -> float | None:
    name = "driftline_api_cache_lookups_total"
    counts = {r: after.value(name, cache=cache, result=r) - before.value(name, cache=cache,
                                                                          result=r)
              for r in ("hit", "miss")}
    total = counts["hit"] + counts["miss"]
    return round(counts["hit"] / total, 3) if total else None


def milliseconds(values: list[float]) -> dict:
    if not values:
        return {}
    ms = np.asarray(values) * 1000.0
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
    return {"p50": round(float(p50), 2), "p99": round(float(p99), 2),
            "p99.9": round(float(p999), 2), "max": round(float(ms.max()), 2),
            "mean": round(float(ms.mean()), 2)}


def summary(server: Server, scenario: Scenario, rec: Recorder, elapsed: float, cpu: dict,
            before: Scrape, after: Scrape) -> dict:
    ok = len(rec.latencies)
    row = {
        "workers": server.workers, "caches": "on" if server.caches else "off",
        "scenario": scenario.name, "mode": scenario.mode, "label": scenario.label,
        "offered_rate": scenario.rate or None,
        "sent": ok + sum(rec.errors.values()), "ok": ok, "seconds": round(elapsed, 2),
        "requests_per_s": round(ok / elapsed, 1),
        "requests_per_s_per_process": round(ok / elapsed / server.workers, 1),
        "events": rec.events,
        "events_per_s": round(rec.events / elapsed, 1) if rec.events else None,
        # CPU of the API processes per answer: what a core of their own would serve, whatever
        # share of the machine they got
        "api_cpu_us_per_request": round(1e6 * cpu["api"] * elapsed / ok) if ok else None,
        "api_cpu_us_per_event": round(1e6 * cpu["api"] * elapsed / rec.events)
        if rec.events else None,
        "latency_ms": milliseconds(rec.latencies),
        "errors": dict(rec.errors), "error_samples": rec.error_samples,
        "degraded": rec.degraded, "unknown_entities": rec.unknown,
        "degraded_by_reason": degraded_by_reason(before, after),
        "cache_hit_ratio": {c: hit_ratio(before, after, c) for c in ("features", "inference")},
        "cpu_cores": cpu,
    }
    if scenario.mode == "open":
        row["send_lag_ms"] = milliseconds(rec.lags)
    return row


def add_ratios(rows: list[dict]) -> None:
    """Each scenario against ``healthz`` on the same server: closed-loop throughput, and
    open-loop p99 at the same offered rate."""
    base = {r["mode"]: r for r in rows if r["scenario"] == "healthz"}
    for r in rows:
        ref = base.get(r["mode"])
        if r["mode"] == "closed":
            r["throughput_vs_healthz"] = round(r["requests_per_s"] / ref["requests_per_s"], 3)
        elif ref and ref["offered_rate"] == r["offered_rate"] and ref["latency_ms"] \
                and r["latency_ms"]:
            r["p99_vs_healthz"] = round(r["latency_ms"]["p99"] / ref["latency_ms"]["p99"], 2)


# ---- printing ------------------------------------------------------------------------------

COLUMNS = (f"{'proc':>4} {'cache':>5} {'scenario':<21} {'req/s':>7} {'/proc':>6} {'ev/s':>7} "
           f"{'rps/hz':>6} {'p50':>6} {'p99':>6} {'p99.9':>6} {'p99/hz':>6} {'us/rq':>6} "
           f"{'n':>6} {'err':>4} {'degr':>4} {'fc-hit':>6} {'ic-hit':>6}  {'cpu: gen':>8} "
           f"{'api':>4} {'redis':>5} {'other':>5}")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_row(r: dict, flush: bool = False) -> None:
    lat, cpu, hits = r["latency_ms"], r["cpu_cores"], r["cache_hit_ratio"]
    print(f"{r['workers']:>4} {r['caches']:>5} {r['label']:<21} {r['requests_per_s']:>7.0f} "
          f"{r['requests_per_s_per_process']:>6.0f} {_fmt(r['events_per_s'], '>7.0f')} "
          f"{_fmt(r.get('throughput_vs_healthz'), '>6.2f')} {_fmt(lat.get('p50'), '>6.2f')} "
          f"{_fmt(lat.get('p99'), '>6.2f')} {_fmt(lat.get('p99.9'), '>6.2f')} "
          f"{_fmt(r.get('p99_vs_healthz'), '>6.1f')} "
          f"{_fmt(r['api_cpu_us_per_request'], '>6d')} {r['ok']:>6} "
          f"{sum(r['errors'].values()):>4} {r['degraded']:>4} "
          f"{_fmt(hits['features'], '>6.2f')} {_fmt(hits['inference'], '>6.2f')}  "
          f"{cpu['generator']:>8.2f} {cpu['api']:>4.2f} {cpu['redis']:>5.2f} "
          f"{cpu['other']:>5.2f}{remarks(r)}", flush=flush)


def remarks(r: dict) -> str:
    """Why degraded, which errors, what disturbed the scenario."""
    found = [f"degraded: {reason} {n:.0f}" for reason, n in r["degraded_by_reason"].items()]
    found += [f"{kind} x{n}" for kind, n in r["errors"].items()]
    found += [f"DISTURBED: {r['disturbed']}"] if r["disturbed"] else []
    if r["workers"] > 1:
        found.append("cores by process " + "/".join(
            f"{c:.2f}" for c in r["cpu_cores"]["api_per_process"]))
    return f"  ({'; '.join(found)})" if found else ""


def notes(args: argparse.Namespace, cards: int) -> list[str]:
    return [
        f"This machine has {os.cpu_count()} CPUs. The load generator (this process, one "
        "event loop) shares them with the API processes, Redis and whatever else runs: the "
        "cpu columns are the cores each used during the scenario ('other': the rest of the "
        "machine's busy time). A server whose cores are taken by the generator does less "
        "than it would alone.",
        "Caches on vs off: the same request sequences (same events, same order, same bytes) "
        "are sent to a server with the default caches and to one with "
        "DRIFTLINE_FEATURE_CACHE_SIZE=0 and DRIFTLINE_INFERENCE_CACHE_SIZE=0; nothing else "
        "differs. No stream worker runs, so states never change: a feature-cache hit is "
        "never stale here (in production it may miss its TTL's last events).",
        f"single/batch: {cards} known cards, distinct events ({args.repeat:.0%} exact "
        "repeats). The inference cache is keyed on the model version and the feature "
        "vector, so it hits only on repeats; the feature cache hits when a card is scored "
        "again within its TTL, so its hit ratio grows with the request rate over the number "
        "of cards. hot: "
        f"{args.hot_cards} cards, {args.hot_repeat:.0%} exact repeats: what caches are for.",
        "Latency (ms) from the send (closed loop) or from the scheduled send (open loop: "
        "coordinated omission avoided; 'send_lag_ms' is the generator's own lateness) to the "
        "whole answer read; exact percentiles of the successful responses. p99.9 rests on "
        "the slowest 0.1% of 'n' responses.",
        "rps/hz: closed-loop throughput over healthz's on the same server; p99/hz: open-loop "
        "p99 over healthz's p99 at the same offered rate. Closed-loop healthz is bounded by the "
        "generator as much as by the server (compare their cpu columns).",
        "us/rq: CPU time of the API processes per successful answer (a batch is one): what "
        "one core of their own would serve is 1e6 / us/rq requests/s. It depends much less "
        "on what else the machine runs than requests/s does.",
        "With several processes the kernel hands each connection, not each request, to one "
        "of them: a closed loop's few keep-alive connections may load one process more than "
        "another ('cores by process').",
        "degr: scores answered by the fallback model (degraded), counted in req/s and ev/s "
        "like the others; they cost less. ic-hit counts the fallback's lookups too (keyed on "
        "the amount alone, they repeat).",
        f"batch open at {args.batch_rate:g} requests/s of {args.batch} offers "
        f"{args.batch_rate * args.batch:g} events/s, to compare with single open at "
        f"{args.rate:g} requests/s.",
    ]


def print_table(rows: list[dict], notes_: list[str]) -> None:
    print()
    print(COLUMNS)
    for r in rows:
        print_row(r)
    print()
    for note in notes_:
        print(f"* {note}")


def busy_warning(rows: list[dict], threshold: float = 0.25) -> str | None:
    busy = [r for r in rows if r["cpu_cores"]["other"] > threshold]
    if not busy:
        return None
    return (f"WARNING: other work used more than {threshold} cores during {len(busy)} of "
            f"{len(rows)} scenarios (up to {max(r['cpu_cores']['other'] for r in busy):.2f}): "
            "rerun on a quiet machine before quoting absolute figures (the rps/hz, p99/hz and "
            "us/rq columns suffer least).")


def degraded(row: dict) -> str:
    if not row["degraded"]:
        return ""
    return f", {row['degraded'] / row['events']:.1%} degraded"


def headline(rows: list[dict], args: argparse.Namespace) -> list[str]:
    """requests/s per process and p99 at a fixed offered load, as the project note gives
    them."""
    lines = []
    for (workers, caches), group in itertools.groupby(
            rows, key=lambda r: (r["workers"], r["caches"])):
        by = {(r["scenario"], r["mode"]): r for r in group}
        single, opened = by[("single", "closed")], by[("single", "open")]
        batch, batch_open = by[("batch", "closed")], by[("batch", "open")]
        lines.append(
            f"{workers} process(es), caches {caches}: single {single['requests_per_s']:.0f} "
            f"req/s ({single['requests_per_s_per_process']:.0f}/process{degraded(single)}), "
            f"p99 {opened['latency_ms'].get('p99', float('nan')):.1f} ms at {args.rate:g} "
            f"req/s; batch of {args.batch}: {batch['events_per_s'] or 0:.0f} events/s"
            f"{degraded(batch)}, p99 {batch_open['latency_ms'].get('p99', float('nan')):.1f} "
            f"ms at {args.batch_rate:g} req/s")
    return lines


# ---- the run -------------------------------------------------------------------------------

def git_commit() -> dict:
    def git(*argv: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *argv], cwd=REPO, text=True,
                              capture_output=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"about a minute: {', '.join(f'{k}={v}' for k, v in QUICK.items())}")
    p.add_argument("--workers", type=int, nargs="+",
                   help=f"API processes to measure (default {FULL['workers']})")
    p.add_argument("--seconds", type=float, help=f"per scenario (default {FULL['seconds']})")
    p.add_argument("--warmup", type=float,
                   help=f"seconds of warm-up before each scenario (default {FULL['warmup']})")
    p.add_argument("--max-requests", type=int, default=50_000, help="per scenario")
    p.add_argument("--concurrency", type=int, default=16,
                   help="closed loop: clients of healthz, single and hot")
    p.add_argument("--batch-concurrency", type=int, default=4,
                   help="closed loop: clients of batch")
    p.add_argument("--connections", type=int, default=64, help="open loop: connection pool")
    p.add_argument("--rate", type=float, default=500.0,
                   help="open loop: requests/s of healthz, single and hot")
    p.add_argument("--batch", type=int, default=50, help="events per batch request")
    p.add_argument("--batch-rate", type=float, default=10.0,
                   help="open loop: batch requests/s")
    p.add_argument("--history", type=int,
                   help=f"events replayed to seed states and the model (default "
                        f"{FULL['history']})")
    p.add_argument("--repeat", type=float, default=0.0,
                   help="single/batch: share of requests repeating an earlier one exactly")
    p.add_argument("--hot-cards", type=int, default=10)
    p.add_argument("--hot-repeat", type=float, default=0.5)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds, per request")
    p.add_argument("--attempts", type=int, default=3,
                   help="measurements of a scenario that Redis trouble disturbed, at most")
    args = p.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def seed_namespace(s: Settings, events: int) -> tuple[str, list[Card], float]:
    """Seed the states and the model; the model's version, the cards and the history's last
    event time (the rest of the history is dropped: the generator's heap stays small)."""
    started = time.monotonic()
    seeded = seed(s, PIPELINES[PIPELINE], events, time.time())
    print(f"seeded {len(seeded.states)} cards and model {seeded.learner.version} in "
          f"{time.monotonic() - started:.1f}s; prequential "
          f"{seeded.learner.metrics_by_version()}", flush=True)
    return (seeded.learner.version, cards_of(seeded),
            max(PIPELINES[PIPELINE].time_of(e) for e in seeded.events))


def main() -> None:
    args = parse_args()
    base = Settings.from_env()
    stack = LocalStack(base)
    stack.up()
    rows: list[dict] = []
    problems: dict[str, list[str]] = {}
    with scratch_namespace(base, base.prefixed(f"bench-{uuid.uuid4().hex[:6]}")) as s:
        started = time.monotonic()
        version, cards, end = seed_namespace(s, args.history)
        requests = Requests(cards, end + 1.0, args)
        print(COLUMNS, flush=True)
        for workers in args.workers:
            with api_servers(s, workers, version) as servers:
                rows.extend(asyncio.run(run_servers(servers, requests, args, stack)))
            for server in servers:
                problems[f"{workers} process(es), caches {'on' if server.caches else 'off'}"] \
                    = log_problems(server.process.log_path)
        rows.sort(key=lambda r: (r["workers"], r["caches"] == "off", r["order"]))
        for _, group in itertools.groupby(rows, key=lambda r: (r["workers"], r["caches"])):
            add_ratios(list(group))
        settings = {k: getattr(s, k) for k in (
            "api_deadline_seconds", "api_explain_top", "feature_cache_size",
            "feature_cache_ttl_seconds", "inference_cache_size", "model_refresh_seconds",
            "api_batch_max", "log_level")}
    report(args, rows, problems, settings, version, len(cards), time.monotonic() - started)


def report(args: argparse.Namespace, rows: list[dict], problems: dict[str, list[str]],
           settings: dict, version: str, cards: int, seconds: float) -> None:
    notes_ = notes(args, cards)
    print_table(rows, notes_)
    print()
    lines = headline(rows, args)
    warning = busy_warning(rows)
    if warning:
        lines.append(warning)
    for line in lines:
        print(line)
    for server, found in problems.items():
        print(f"API log, {server}: {len(found)} warning/error lines"
              + "".join(f"\n    {line[:200]}" for line in found[:5]))
    command = shlex.join(["python", "benchmarks/api_load.py", *sys.argv[1:]])
    print(f"reproduce: {command}")
    result = {
        "command": command, "arguments": vars(args), "cpu_count": os.cpu_count(),
        "git": git_commit(), "model_version": version, "cards": cards,
        "settings": settings, "caches_off_overrides": CACHES_OFF, "run_seconds": round(seconds, 1),
        "headline": lines, "notes": notes_, "api_log_problems": problems, "scenarios": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("api_load-quick.json" if args.quick else "api_load.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
