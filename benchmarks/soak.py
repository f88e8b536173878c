"""Soak: the fraud pipeline at a steady rate for half an hour, a fault every few minutes,
then an account of every event and label.

    python benchmarks/soak.py                                # 30 min, 200 events/s, faults every 5
    python benchmarks/soak.py --minutes 3 --fault-every 0.5  # each fault once: about 5 min in all

The worker (``driftline worker --pipeline fraud``) and the API (``driftline serve``, with a
scorer token) run as child processes in a scratch namespace of the local stack, removed at
the end. A thread produces the fraud generator's stream for ``--minutes`` at ``--rate``
events/s, each label after its event by the generator's own delay (10 to 15 minutes of event
time: 6 to 9 s at 200 events/s). Every ``--fault-every`` minutes comes one fault, in turn:

* ``redis``: the stack's Redis stopped, ``--down`` seconds, started;
* ``kafka``: the broker stopped (SIGTERM; SIGKILL after 20 s), ``--down`` seconds, started
  (it takes a while);
* ``milvus``: the Milvus Lite server stopped, ``--down`` seconds, started;
* ``worker-kill``: the worker killed (SIGKILL) and started again;
* ``api-term``: the API stopped (SIGTERM) and started again.

(``--faults`` picks and orders them.) The stack's faults are real: every process on this
machine that uses the stack (a test run, a demo) rides them out too; ``--faults
worker-kill,api-term`` leaves it alone. A service this script stopped is started again
however it ends, Ctrl-C included (the first stops the run, skips the accounting and cleans
up; the second stops waiting). A worker or API that exits by itself is started again and
counted.

Meanwhile ``POST /v1/score/fraud`` every ``--probe-every`` seconds samples the API's
latency (p50, p99 of the answers) and its failures (5xx apart; unreachable while it
restarts), and the RSS (``VmRSS``) of the worker and the API is read after the warm-up,
before and after each fault, and at the end (a restarted process starts from nothing).

Then it waits for the tail, at most ``--drain`` seconds (until the labels learned reach
the labels produced, or nothing moves for a minute with no lag left), and accounts from the
topics and Redis: events produced, distinct events predicted, predictions emitted twice,
dead letters by reason, labels produced, labels learned (the learner's ``updates`` in
Redis), distinct ids in the training log; with the worker's lag at the end. A record
missing or repeated is put down to the fault whose aftermath it was written in (the last
one begun before its Kafka timestamp). A balanced run prints OK: every event predicted,
every label in the training log and learned once, nothing dead-lettered, no lag left, no
5xx, no process exiting by itself; a prediction or training record sent twice only after
a worker kill (outputs are at least once after a crash, exactly once through the other
faults, as in ``tests/integration/test_faults.py``). Otherwise it prints each mismatch and
exits 1. Figures are printed and written to ``benchmarks/results/soak.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shlex
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redis.exceptions import RedisError

from benchmarks.api_load import git_commit, log_problems, milliseconds
from benchmarks.ingest import forget_worker_state, machine
from benchmarks.vector_scale import memory_mb
from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import ensure_pipeline_topics, partition_counts
from driftline.adapters.stores import learner_status
from driftline.adapters.topic_reader import committed_offset, read_topic, watermarks
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import ServiceProcess, api_process, api_url, worker_process
from driftline.tools.stack import LocalStack
from driftline.tools.synthetic import ProduceReport, produce
from monitoring.scrape import Scrape, scrape
from serving.auth import new_token
from streams.generators import pipeline_history
from streams.generators.base import Emission
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics

PIPELINE = "fraud"
RESULTS = Path(__file__).resolve().parent / "results"
STACK_TIMEOUT = 180.0  # seconds for a stopped service to answer again (the broker is slow)
START_TIMEOUT = 300.0  # seconds for the worker or the API to answer /healthz
READ_TIMEOUT = 600.0   # seconds to read a topic to its end for the accounting
STILL = 60.0           # seconds without progress, and no lag, that end the drain
PROGRESS_EVERY = 30.0


class Interrupted(Exception):
    """Ctrl-C: the run stops, the stack is brought back up and the namespace removed."""


# ---- what runs ---------------------------------------------------------------------------

@dataclass
class Services:
    """The stack and the two processes under test, and when each fault began and ended
    (a probe that failed inside one is put down to it)."""

    stack: LocalStack
    worker: ServiceProcess
    api: ServiceProcess
    started: float = field(default_factory=time.monotonic)
    started_epoch: float = field(default_factory=time.time)
    windows: list[tuple[str, float, float]] = field(default_factory=list)

    def start_clock(self) -> None:
        self.started, self.started_epoch = time.monotonic(), time.time()

    def now(self) -> float:
        return time.monotonic() - self.started

    def fault_at(self, t: float) -> str | None:
        return next((name for name, a, b in self.windows if a <= t <= b), None)

    def aftermath(self, epoch: float, margin: float = 5.0) -> str:
        """The fault whose aftermath a record written at ``epoch`` (its Kafka timestamp)
        belongs to: the last one begun before it, counting the ``margin`` seconds before
        a fault began (records in flight when it struck)."""
        t, found = epoch - self.started_epoch, "no fault before"
        for name, began, _ in self.windows:
            if began - margin <= t:
                found = f"after {name} ({clock(began)})"
        return found


def restart_store(name: str) -> Callable[[Services, float, threading.Event], str]:
    def fault(services: Services, down: float, stop: threading.Event) -> str:
        pid = services.stack.pid(name)
        if pid is None:
            raise RuntimeError(f"{name} was not started by `driftline stack up`: not ours to stop")
        services.stack.down((name,))
        stop.wait(down)
        services.stack.up(timeout=STACK_TIMEOUT, services=(name,))
        return f"pid {pid} -> {services.stack.pid(name)}"
    return fault


def kill_worker(services: Services, down: float, stop: threading.Event) -> str:
    pid = services.worker.proc.pid
    services.worker.kill()
    services.worker.start(timeout=START_TIMEOUT)
    return f"pid {pid} killed (SIGKILL), pid {services.worker.proc.pid} ready"


def terminate_api(services: Services, down: float, stop: threading.Event) -> str:
    pid, began = services.api.proc.pid, time.monotonic()
    services.api.stop(timeout=30.0)  # SIGTERM; SIGKILL after 30 s
    took, code = time.monotonic() - began, services.api.proc.returncode
    services.api.start(timeout=START_TIMEOUT)
    return (f"pid {pid} exited with {code} {took:.1f} s after SIGTERM, "
            f"pid {services.api.proc.pid} ready")


FAULTS: dict[str, Callable[[Services, float, threading.Event], str]] = {
    "redis": restart_store("redis"),
    "kafka": restart_store("kafka"),
    "milvus": restart_store("milvus"),
    "worker-kill": kill_worker,
    "api-term": terminate_api,
}


def restore(stack: LocalStack) -> None:
    """Every service of the stack up again, Ctrl-C or not: a fault must not outlive us.
    Says what it had to start, and nothing when all was up."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    said = io.StringIO()
    try:
        LocalStack(stack.settings, out=said).up(timeout=STACK_TIMEOUT)
    except Exception:
        print("the local stack is NOT all up: run `driftline stack up`", flush=True)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        if "starting" in said.getvalue():
            print(said.getvalue(), end="", flush=True)


# ---- what is measured meanwhile ------------------------------------------------------------

def rss(proc: ServiceProcess) -> dict | None:
    """The process's resident memory now (MB) and its peak, or None when it is not running."""
    if proc.proc is None or proc.proc.poll() is not None:
        return None
    try:
        mb = memory_mb(proc.proc.pid)
    except (OSError, KeyError):
        return None
    return {"pid": proc.proc.pid, "rss_mb": round(mb["VmRSS"], 1),
            "peak_mb": round(mb["VmHWM"], 1)}


class LatencyProbe(threading.Thread):
    """Scores one event through the API every ``every`` seconds, in a thread: latency of
    each answer, and each failure by kind."""

    def __init__(self, services: Services, settings: Settings, token: str, every: float) -> None:
        super().__init__(daemon=True)
        self.services, self.every = services, every
        self.url = f"{api_url(settings)}/v1/score/{PIPELINE}"
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        self.samples: list[dict] = []  # t, status (0: no answer), seconds, degraded, error
        self.stopped = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopped.wait(self.every):
            i += 1
            self.samples.append(self.probe(i))

    def probe(self, i: int) -> dict:
        event = {"event_id": f"probe-{i}", "card_id": f"card-{(i * 37) % 1000:05d}",
                 "merchant_id": "m0007", "amount": 25.0, "ts": round(time.time(), 3)}
        req = urllib.request.Request(self.url, data=json.dumps(event).encode(),
                                     headers=self.headers, method="POST")
        t, began = self.services.now(), time.perf_counter()
        sample = {"t": round(t, 2), "status": 0, "degraded": None, "error": None}
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = json.loads(resp.read())
                sample["status"] = resp.status
                sample["degraded"] = body.get("degraded_reason") if body.get("degraded") \
                    else None
        except urllib.error.HTTPError as exc:
            sample["status"], sample["error"] = exc.code, exc.read()[:200].decode(errors="replace")
        except (OSError, ValueError) as exc:  # refused, reset, timed out; not JSON
            sample["error"] = f"{type(exc).__name__}: {exc}"[:200]
        sample["seconds"] = time.perf_counter() - began
        sample["until"] = round(self.services.now(), 2)
        return sample

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join()

    def summary(self) -> dict:
        """Latency of the answers; failures by kind, each put down to the fault it met
        (known once the faults are over)."""
        answered = [s for s in self.samples if 200 <= s["status"] < 300]
        failed = [s for s in self.samples if not 200 <= s["status"] < 300]
        for s in failed:
            s["during"] = self.services.fault_at(s["t"]) or self.services.fault_at(s["until"])

        def by(kind: Callable[[dict], bool]) -> dict:
            chosen = [s for s in failed if kind(s)]
            return {"count": len(chosen),
                    "during": dict(Counter(s["during"] or "no fault" for s in chosen))}

        return {"requests": len(self.samples), "answered": len(answered),
                "latency_ms": milliseconds([s["seconds"] for s in answered]),
                "degraded": dict(Counter(s["degraded"] for s in answered if s["degraded"])),
                "5xx": by(lambda s: s["status"] >= 500),
                "4xx": by(lambda s: 400 <= s["status"] < 500),
                "unreachable": by(lambda s: s["status"] == 0),
                "first_failures": failed[:5]}


class Producer(threading.Thread):
    """The stream, paced, for the whole run; the ids of the events it sent."""

    def __init__(self, settings: Settings, events: int, rate: float, seed: int,
                 stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        config, self.emissions = pipeline_history(
            PIPELINES[PIPELINE], events, time.time(), seed=seed, run_id=uuid.uuid4().hex[:8])
        self.speed = rate / config.events_per_second
        self.stop_asked = stop
        self.event_ids: set[str] = set()
        self.report = ProduceReport()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.report = produce(self.settings, PIPELINE, self._tally(), speed=self.speed,
                                  on_progress=self._progress, should_stop=self.stop_asked.is_set)
        except BaseException as exc:  # noqa: BLE001 - told in the report
            self.error = exc

    def _tally(self) -> Iterator[Emission]:
        for e in self.emissions:
            if e.kind == "event":
                self.event_ids.add(e.record.event_id)
            yield e

    def _progress(self, report: ProduceReport) -> None:
        self.report = report


# ---- the run -------------------------------------------------------------------------------

@dataclass
class Soak:
    args: argparse.Namespace
    settings: Settings
    services: Services
    producer: Producer
    probe: LatencyProbe
    stop: threading.Event
    memory: list[dict] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)
    exits: list[dict] = field(default_factory=list)  # processes that exited by themselves

    def sample_memory(self, moment: str) -> None:
        row = {"t": round(self.services.now(), 1), "moment": moment,
               "worker": rss(self.services.worker), "api": rss(self.services.api)}
        self.memory.append(row)
        print(f"  {clock(row['t'])}  memory {moment}: worker {mb(row['worker'])}, "
              f"api {mb(row['api'])}", flush=True)

    def apply(self, name: str, planned: float) -> None:
        self.sample_memory(f"before {name}")
        began = self.services.now()
        print(f"  {clock(began)}  fault {name} ...", flush=True)
        row = {"fault": name, "planned_s": round(planned, 1), "at_s": round(began, 1)}
        try:
            row["outcome"] = FAULTS[name](self.services, self.args.down, self.stop)
        except Exception as exc:  # noqa: BLE001 - a failed fault is a finding, not the end
            row["error"] = f"{type(exc).__name__}: {exc}"
        ended = self.services.now()
        self.services.windows.append((name, began, ended))
        row["seconds"] = round(ended - began, 1)
        self.faults.append(row)
        print(f"  {clock(ended)}  fault {name} done in {row['seconds']} s: "
              f"{row.get('outcome') or 'FAILED: ' + row['error']}", flush=True)
        self.sample_memory(f"after {name}")

    def watch(self) -> None:
        """Start again a worker or API that exited by itself (not by a fault of ours)."""
        for proc in (self.services.worker, self.services.api):
            code = proc.proc.poll()
            if code is None:
                continue
            t = self.services.now()
            row = {"process": proc.name, "t": round(t, 1), "code": code}
            print(f"  {clock(t)}  the {proc.name} exited by itself with {code}: starting it "
                  f"again (see {proc.log_path})", flush=True)
            try:
                proc.start(timeout=START_TIMEOUT)
            except RuntimeError as exc:
                row["restart_error"] = str(exc)
            self.exits.append(row)

    def stream(self) -> None:
        """Produce for ``--minutes``, applying the faults on schedule."""
        duration = self.args.minutes * 60.0
        every = self.args.fault_every * 60.0
        schedule = [every * k for k in range(1, int(duration / every) + 2)
                    if every * k < duration] if every > 0 else []
        warm = min(self.args.warm_up, (schedule[0] if schedule else duration) / 2)
        names = self.args.faults
        if self.stop.is_set():
            raise Interrupted
        self.services.start_clock()
        self.producer.start()
        self.probe.start()
        warmed, shown = False, 0.0
        while self.producer.is_alive():
            if self.stop.wait(0.5):
                raise Interrupted
            t = self.services.now()
            self.watch()
            if not warmed and t >= warm:
                self.sample_memory("after warm-up")
                warmed = True
            if schedule and t >= schedule[0]:
                self.apply(names[len(self.faults) % len(names)], schedule.pop(0))
            if t - shown >= PROGRESS_EVERY:
                shown = t
                self.progress()
        if self.stop.is_set():  # the producer stopped for it
            raise Interrupted
        if self.producer.error is not None:
            print(f"  {clock(self.services.now())}  the producer failed: {self.producer.error!r}",
                  flush=True)
        self.probe.stop()

    def progress(self) -> None:
        learned = self.learned()
        print(f"  {clock(self.services.now())}  produced {self.producer.report.events} events, "
              f"{self.producer.report.labels} labels; learned "
              f"{'-' if learned is None else learned}; API probes {len(self.probe.samples)}",
              flush=True)

    def learned(self) -> int | None:
        try:
            return int(learner_status(self.settings, PIPELINE).get("updates") or 0)
        except RedisError:
            return None

    def drain(self) -> float:
        """Until every label produced is learned, or nothing moves for ``STILL`` seconds
        with no lag left, at most ``--drain`` seconds: how long it waited."""
        began = time.monotonic()
        labels = self.producer.report.labels
        last, moved = None, began
        while time.monotonic() - began < self.args.drain:
            if self.stop.wait(2.0):
                raise Interrupted
            self.watch()
            learned = self.learned()
            if learned is not None and learned >= labels:
                break
            if learned != last:
                last, moved = learned, time.monotonic()
            elif time.monotonic() - moved > STILL and not sum(lag(self.settings).values()):
                break
        return time.monotonic() - began


def lag(settings: Settings) -> dict[str, float]:
    """The worker's consumer lag by topic (its own gauge: records not yet processed)."""
    try:
        found: Scrape = scrape(settings.worker_metrics_url)
    except OSError:
        return {"(worker not answering)": float("nan")}
    out: dict[str, float] = {}
    for labels, value in found.get("driftline_consumer_lag", []):
        if labels.get("pipeline") == PIPELINE:
            kind = labels["topic"].rsplit(".", 1)[-1]
            out[kind] = out.get(kind, 0.0) + value
    return out


def committed_lag(settings: Settings, topics: PipelineTopics) -> dict[str, int]:
    """Records of the worker's inputs past what its consumer group committed, and training
    examples past the learner's cursor in Redis: what a worker started now would still
    have to do, whichever worker ran before."""
    counts = partition_counts(settings)
    out = {}
    for kind in ("events", "labels", "join"):
        topic, behind = getattr(topics, kind), 0
        for partition in range(counts.get(topic, 0)):
            low, high = watermarks(settings, topic, partition)
            done = committed_offset(settings, settings.app_id, topic, partition)
            behind += high - (low if done is None else done)
        out[kind] = behind
    _, end = watermarks(settings, topics.training, 0)
    cursor = learner_status(settings, PIPELINE).get("next_offset") or "0"
    out["training"] = max(0, end - int(cursor))
    return out


def settled_lag(settings: Settings, topics: PipelineTopics, wait: float = 15.0
                ) -> dict[str, int]:
    """:func:`committed_lag` once it is nil, or after ``wait`` seconds (Faust commits every
    few seconds)."""
    deadline = time.monotonic() + wait
    while True:
        found = committed_lag(settings, topics)
        if not sum(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(1.0)


def copies(settings: Settings, topic: str, key: Callable[[bytes, bytes], str | None]
           ) -> dict[str, list[float]]:
    """The Kafka timestamps of each event id's records in ``topic``."""
    found: dict[str, list[float]] = {}
    for r in read_topic(settings, topic, READ_TIMEOUT):
        event_id = key(r.key, r.value)
        if event_id is not None:
            found.setdefault(event_id, []).append(r.timestamp)
    return found


def in_value(_: bytes, value: bytes) -> str | None:
    return json.loads(value).get("event_id")


def repeats(services: Services, found: dict[str, list[float]]) -> dict:
    """Records beyond the first of an event id, by the fault whose aftermath they were
    written in; ``same_timestamp``: a copy stamped as its first (the same record sent
    again) rather than written anew (the event handled again)."""
    extra = [(ts[0], later) for ts in found.values() if len(ts) > 1 for later in ts[1:]]
    return {"count": len(extra),
            "by_fault": dict(Counter(services.aftermath(t) for _, t in extra)),
            "same_timestamp": sum(first == t for first, t in extra),
            "ms_after_first": milliseconds([abs(t - first) for first, t in extra])}


def missing(services: Services, settings: Settings, topic: str, ids: set[str]) -> dict:
    """Event ids absent from an output, by the fault after which their input (an event
    or a label, read from ``topic``) was produced."""
    if not ids:
        return {"count": 0, "by_fault": {}}
    times = {i: ts[0] for i, ts in copies(settings, topic, in_value).items() if i in ids}
    return {"count": len(ids), "by_fault": dict(Counter(services.aftermath(t)
                                                         for t in times.values())),
            "examples": sorted(ids)[:5]}


def account(settings: Settings, topics: PipelineTopics, producer: Producer,
            services: Services) -> dict:
    """Every event and label, from the topics and the learner's status in Redis; what
    is missing or repeated, by the fault it followed."""
    produced = producer.event_ids
    predicted = copies(settings, topics.predictions, in_value)
    trained = copies(settings, topics.training, in_value)
    letters = [json.loads(r.value) for r in read_topic(settings, topics.deadletter,
                                                        READ_TIMEOUT)]
    status = learner_status(settings, PIPELINE)
    reasons = Counter(f'{d["source_topic"].rsplit(".", 1)[-1]}: '
                      f'{re.sub(r"[0-9][0-9.e+-]*", "N", d["error"])[:100]}' for d in letters)
    return {"events_produced": producer.report.events,
            "events_predicted": len(predicted.keys() & produced),
            "predictions_emitted_twice": sum(len(ts) - 1 for ts in predicted.values()),
            "predictions_of_unknown_events": len(predicted.keys() - produced),
            "dead_letters": len(letters),
            "dead_letters_by_reason": dict(reasons.most_common()),
            "labels_produced": producer.report.labels,
            "labels_learned": int(status.get("updates") or 0),
            "learner_duplicates_skipped": int(status.get("duplicates") or 0),
            "training_log_ids": len(trained.keys() & produced),
            "training_log_records": sum(len(ts) for ts in trained.values()),
            "where": {
                "predictions_repeated": repeats(services, predicted),
                "training_records_repeated": repeats(services, trained),
                "events_not_predicted": missing(services, settings, topics.events,
                                                produced - predicted.keys()),
                "labels_not_in_training_log": missing(services, settings, topics.labels,
                                                      produced - trained.keys())}}


def mismatches(acc: dict, end_lag: dict[str, dict], api: dict, exits: list[dict],
               faults: list[dict], producer: Producer) -> list[str]:
    """What a balanced run would not show: one line each."""
    where = acc["where"]
    want = [("events predicted", acc["events_produced"], acc["events_predicted"],
             where["events_not_predicted"]),
            ("predictions emitted twice, not after a worker kill", 0,
             beyond_crash(where["predictions_repeated"]), where["predictions_repeated"]),
            ("training records repeated, not after a worker kill", 0,
             beyond_crash(where["training_records_repeated"]),
             where["training_records_repeated"]),
            ("dead letters", 0, acc["dead_letters"], None),
            ("ids in the training log", acc["labels_produced"], acc["training_log_ids"],
             where["labels_not_in_training_log"]),
            ("labels learned", acc["labels_produced"], acc["labels_learned"], None),
            ("worker lag at the end (committed)", 0, sum(end_lag["committed"].values()),
             None),
            ("API 5xx answers", 0, api["5xx"]["count"], api["5xx"]),
            ("processes that exited by themselves", 0, len(exits), None),
            ("faults that failed", 0, sum("error" in f for f in faults), None)]
    out = [f"{name}: {got:g}, expected {expected:g}{attributed(found)}"
           for name, expected, got, found in want if got != expected]
    if producer.error is not None:
        out.append(f"the producer failed: {producer.error!r}")
    return out


def beyond_crash(repeated: dict) -> int:
    """Repeated records not written in a worker kill's aftermath. After a kill -9 the
    outputs are at least once (the new worker sends again what the dead one may have
    sent; the fault suite allows it there), exactly once through any other fault."""
    return repeated["count"] - sum(n for fault, n in repeated["by_fault"].items()
                                   if fault.startswith("after worker-kill"))


def attributed(found: dict | None) -> str:
    """`` (3 after kafka (1:00))``: a count's share of each fault, when it has them."""
    shares = (found or {}).get("by_fault") or (found or {}).get("during")
    return f" ({', '.join(f'{n} {fault}' for fault, n in shares.items())})" if shares else ""


def log_summary(proc: ServiceProcess) -> dict:
    """Warnings and errors in a process's log over the run (restarts append to it)."""
    lines = log_problems(proc.log_path)
    messages: Counter[str] = Counter()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            messages[f'{record.get("level")} {str(record.get("message", ""))[:90]}'] += 1
        else:
            messages[line[:100]] += 1
    return {"log": str(proc.log_path), "problem_lines": len(lines),
            "most_common": dict(messages.most_common(8))}


def run(base: Settings, args: argparse.Namespace, stop: threading.Event) -> dict:
    token, entry = new_token("soak", "scorer")
    logs = base.data_dir / "logs" / "bench-soak"
    for name in ("worker.log", "api.log"):
        (logs / name).unlink(missing_ok=True)
    stack = LocalStack(base)
    with ExitStack() as cleanup:
        s = cleanup.enter_context(scratch_namespace(
            base, base.prefixed(f"bench-soak-{uuid.uuid4().hex[:6]}"),
            worker_port=free_port(), api_port=free_port(), api_tokens=entry))
        cleanup.callback(forget_worker_state, s)
        topics = ensure_pipeline_topics(s, PIPELINE)
        worker = worker_process(s, logs, [PIPELINE])
        cleanup.callback(worker.stop)
        worker.start(timeout=START_TIMEOUT)
        api = api_process(s, logs)
        cleanup.callback(api.stop)
        api.start(timeout=START_TIMEOUT)
        services = Services(stack, worker, api)
        producer = Producer(s, int(args.minutes * 60 * args.rate), args.rate, args.seed, stop)
        probe = LatencyProbe(services, s, token, args.probe_every)
        cleanup.callback(probe.stop)

        def stop_producing() -> None:
            stop.set()
            if producer.is_alive():
                producer.join()

        cleanup.callback(stop_producing)
        cleanup.callback(restore, stack)  # the first to run on the way out
        soak = Soak(args, s, services, producer, probe, stop)
        print(f"namespace {s.namespace}; logs in {logs}; {producer.speed:.0f}x event time",
              flush=True)
        soak.stream()
        restore(stack)  # no-op unless a fault's restart failed
        produced_at = services.now()
        print(f"  {clock(produced_at)}  produced {producer.report.events} events and "
              f"{producer.report.labels} labels in {producer.report.seconds:.0f} s; waiting "
              f"for the tail (at most {args.drain:.0f} s)", flush=True)
        drained = soak.drain()
        soak.sample_memory("at the end")
        end_lag = {"committed": settled_lag(s, topics), "gauge": lag(s)}
        acc = account(s, topics, producer, services)
        api_figures = probe.summary()
        problems = mismatches(acc, end_lag, api_figures, soak.exits, soak.faults, producer)
        return {"namespace": s.namespace, "speed": round(producer.speed, 1),
                "produced_seconds": round(produced_at, 1), "drain_seconds": round(drained, 1),
                "accounting": acc, "worker_lag_at_end": end_lag, "api": api_figures,
                "faults": soak.faults, "memory": soak.memory, "exits": soak.exits,
                "logs": {"worker": log_summary(worker), "api": log_summary(api)},
                "balanced": not problems, "mismatches": problems}


# ---- the report ----------------------------------------------------------------------------

def clock(seconds: float) -> str:
    return f"{int(seconds // 60):d}:{int(seconds % 60):02d}"


def mb(found: dict | None) -> str:
    return "not running" if found is None else \
        f"{found['rss_mb']:.0f} MB (pid {found['pid']}, peak {found['peak_mb']:.0f})"


def print_report(r: dict) -> None:
    acc, api = r["accounting"], r["api"]
    print("\n-- soak --")
    print(f"events produced           {acc['events_produced']}")
    where = acc["where"]
    print(f"events predicted          {acc['events_predicted']} distinct "
          f"({acc['predictions_of_unknown_events']} of events not produced)"
          f"{attributed(where['events_not_predicted'])}")
    again = where["predictions_repeated"]
    print(f"predictions emitted twice {acc['predictions_emitted_twice']}{attributed(again)}"
          + (f"; {again['same_timestamp']} stamped as their first; p50 "
             f"{again['ms_after_first'].get('p50')} ms after it" if again["count"] else ""))
    print(f"dead letters              {acc['dead_letters']}")
    for reason, n in acc["dead_letters_by_reason"].items():
        print(f"    {n:>6}  {reason}")
    print(f"labels produced           {acc['labels_produced']}")
    print(f"labels learned            {acc['labels_learned']} (learner's updates; "
          f"{acc['learner_duplicates_skipped']} duplicates skipped)")
    print(f"training log              {acc['training_log_ids']} distinct ids in "
          f"{acc['training_log_records']} records"
          f"{attributed(where['training_records_repeated'])}; labels missing from it "
          f"{where['labels_not_in_training_log']['count']}"
          f"{attributed(where['labels_not_in_training_log'])}")
    end_lag = r["worker_lag_at_end"]
    print(f"worker lag at the end     {end_lag['committed']} past the group's commits and the "
          f"learner's cursor; the worker's gauge {end_lag['gauge'] or '(not reported yet)'} "
          f"(after {r['drain_seconds']:.0f} s of drain)")
    lat = api["latency_ms"]
    print(f"API probes                {api['requests']} sent, {api['answered']} answered: "
          f"p50 {lat.get('p50', '-')} ms, p99 {lat.get('p99', '-')} ms, max "
          f"{lat.get('max', '-')} ms; degraded {api['degraded'] or 0}")
    for kind in ("5xx", "4xx", "unreachable"):
        print(f"    {kind:<12} {api[kind]['count']:>4}  {api[kind]['during'] or ''}")
    print("faults")
    for f in r["faults"]:
        print(f"    {clock(f['at_s'])}  {f['fault']:<12} {f['seconds']:>6.1f} s  "
              f"{f.get('outcome') or 'FAILED: ' + f['error']}")
    print("memory (RSS; a restarted process starts again from its own)")
    for m in r["memory"]:
        print(f"    {clock(m['t'])}  {m['moment']:<20} worker {mb(m['worker']):<34} "
              f"api {mb(m['api'])}")
    for name, found in r["logs"].items():
        print(f"{name} log: {found['problem_lines']} warning/error lines ({found['log']})")
        for message, n in list(found["most_common"].items())[:4]:
            print(f"    {n:>6}  {message}")
    if r["balanced"]:
        print("OK: every event predicted (again only after a worker kill), every label learned "
              "once, nothing dead-lettered, no lag, no 5xx")
    else:
        print("NOT BALANCED:")
        for line in r["mismatches"]:
            print(f"    {line}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="of production")
    p.add_argument("--rate", type=float, default=200.0, help="events per second")
    p.add_argument("--fault-every", type=float, default=5.0,
                   help="minutes between two faults (0: none)")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help="the faults to cycle through, in this order (default: all, "
                        "%(default)s); worker-kill,api-term leave the shared stack alone")
    p.add_argument("--down", type=float, default=5.0,
                   help="seconds a stack service stays down")
    p.add_argument("--probe-every", type=float, default=2.0,
                   help="seconds between two API latency probes")
    p.add_argument("--warm-up", type=float, default=60.0,
                   help="seconds of production before the first memory reading (at most half "
                        "the time to the first fault)")
    p.add_argument("--drain", type=float, default=300.0,
                   help="seconds to wait for the tail after production ends, at most")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if not args.faults or set(args.faults) - set(FAULTS):
        p.error(f"--faults: names among {', '.join(FAULTS)}")
    return args


def main() -> None:
    args = parse_args()
    base = Settings.from_env()
    LocalStack(base).up()
    info = machine()
    stop = threading.Event()

    def first_interrupt(*_: object) -> None:
        print("\ninterrupted: bringing the stack back up and cleaning up "
              "(Ctrl-C again to stop waiting)", flush=True)
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, first_interrupt)
    print(f"soak: {PIPELINE} at {args.rate:g} events/s for {args.minutes:g} min, a fault every "
          f"{args.fault_every:g} min ({', '.join(args.faults)} in turn)", flush=True)
    started = time.monotonic()
    try:
        result = run(base, args, stop)
    except (Interrupted, KeyboardInterrupt):
        print("stopped before the end: no figures", flush=True)
        sys.exit(130)
    print_report(result)
    command = shlex.join(["python", "benchmarks/soak.py", *sys.argv[1:]])
    print(f"reproduce: {command}")
    out = RESULTS / "soak.json"
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "command": command, "arguments": vars(args), "machine": info, "git": git_commit(),
        "run_seconds": round(time.monotonic() - started, 1), **result}, indent=2) + "\n")
    print(f"written to {out}")
    sys.exit(0 if result["balanced"] else 1)


if __name__ == "__main__":
    main()
