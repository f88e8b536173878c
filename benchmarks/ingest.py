"""Ingest throughput: the Driftline worker against a bare consumer, a bare Faust agent and
Quix Streams, on one backlog, in one run.

    python benchmarks/ingest.py                          # 30,000 events: 5 to 10 minutes on 2 cores
    python benchmarks/ingest.py --events 3000 --knn-events 1000 --no-freshness
    python benchmarks/ingest.py --only a,b,d             # a subset, while developing
    python benchmarks/ingest.py --ref 18225d3            # and the worker of that revision

The fraud generator's history (``--events`` transactions and their labels, seed 1) is
produced unpaced into a scratch namespace of the local stack, then read cold, from its
start, by each contestant in turn, one at a time (none overlaps another's measurement):

* **a** ``confluent``: a bare confluent-kafka consumer in this process, json-decoding each
  value (batches of ``consume``), msg/s;
* **b** ``faust``: a bare Faust agent (``benchmarks/peer_faust.py``, a child process with an
  app id of its own), json-decoding each value, no state, msg/s;
* **c** ``quix``: Quix Streams, the peer a user would pick instead
  (``benchmarks/peer_quix.py``): ``quix-bare`` only decodes; ``quix-features`` computes the
  fraud pipeline's features per card with Quix's stateful ``apply`` over its RocksDB store
  and writes a feature record per event to a topic, events/s. Quix Streams 3.28 requires
  confluent-kafka < 2.13 and Driftline pins a newer one, so it runs in a virtual
  environment of its own, ``<cache dir>/peer-venv`` (``~/.cache/driftline``), built here
  the first time (``python -m venv`` and pip, about 20 s) and reused while its stamp names
  the same requirement;
* **d** ``driftline``: the worker (``driftline worker --pipeline fraud``), which scores every
  event (features, Redis, the model), joins its label and learns it: labeled events/s,
  ``N / (time from the worker ready to N labels learned)``, and when every event was
  scored. The same for ``fraud_knn`` (a vector search in Milvus per scored event) on the
  first ``--knn-events`` of the stream, produced into a namespace of its own;
* **e** ``driftline x2``: two worker processes in one consumer group on the same
  partitions (each with a port and data directory of its own, one registry), spawned
  together, done when the labels learned over both reach N (the learner runs on whichever
  holds the one-partition control topic), on a second namespace with the same backlog.
  Measured from the first of them ready, since it consumes from then on: the second's
  start and the rebalance it causes count (``at_all_ready`` in the JSON says how much was
  done before both were ready).

Then, unless ``--no-freshness``, ``benchmarks/freshness.py`` at ``--freshness-rate`` events/s
offered: p50/p99 from an event's production to its features readable, and their ratio to a
bare consumer's delivery latency in the same run.

Rates are measured from the first record read (a, b, c) or from the (first) worker
answering ``/healthz`` (d, e) to the N-th record: start-up is left out, and given apart as
``cold_seconds`` (process spawned to done). ``cores`` is the CPU time of the contestant's
process over the same span (all its threads; for a, this process; for e, each worker from
its own ready), over the wall time; ``machine``, the whole machine's.
Driftline's figures also count the labels (N more records) and every store behind the
worker; the others read the events topic only. On a 2-core machine the broker, Redis and
Milvus share the cores with every contestant.

Prints a table (each rate and its ratio to a's and to b's) and writes
``benchmarks/results/ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer

from benchmarks.api_load import git_commit
from benchmarks.freshness import measure as measure_freshness
from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import admin, ensure_pipeline_topics, ensure_topics
from driftline.adapters.kafka_clients import client_config
from driftline.adapters.topic_reader import read_topic
from driftline.tools.host import free_port
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.processes import ServiceProcess, worker_process
from driftline.tools.stack import LocalStack
from driftline.tools.synthetic import produce
from monitoring.scrape import Scrape, scrape
from streams.generators import pipeline_history
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
# A --ref worker runs with its revision's defaults for these (0.1 s and 0.2 s since the
# served model was separated from the checkpoint).
REF_DEFAULTS = {"snapshot_seconds": 2.0, "model_refresh_seconds": 0.5}
QUIX = "quixstreams==3.28.*"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONTESTANTS = "abcde"
QUIET = 0.3  # cores busy before the run, at most, for a quiet machine


# ---- the peers' environment ----------------------------------------------------------------

def peer_python(venv: Path) -> Path:
    """The interpreter of the peer environment, built when missing or stamped with another
    requirement."""
    python, stamp = venv / "bin" / "python", venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == QUIX:
        return python
    print(f"building {venv} with {QUIX} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", QUIX], check=True)
    stamp.write_text(QUIX + "\n")
    return python


def peer_version(python: Path, package: str) -> str:
    return subprocess.run([str(python), "-c", f"import importlib.metadata as m; "
                           f"print(m.version({package!r}))"],
                          capture_output=True, text=True, check=True).stdout.strip()


# ---- measuring -----------------------------------------------------------------------------

def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores, from /proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS  # less idle and iowait


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def row(contestant: str, name: str, unit: str, events: int, seconds: float,
        cpu: float, busy: float, cold: float, **extra: object) -> dict:
    """One contestant's figures: ``cpu`` its own CPU seconds and ``busy`` the machine's
    over the measured ``seconds``."""
    out = {"contestant": contestant, "name": name, "unit": unit, "events": events,
           "seconds": round(seconds, 3), "rate": round(events / seconds, 1),
           "cores": round(cpu / seconds, 2), "machine_cores": round(busy / seconds, 2),
           "cold_seconds": round(cold, 2), **extra}
    print(f"  {name}: {out['rate']:,.0f} {unit} ({events} in {seconds:.2f} s, "
          f"{cold:.1f} s from a cold start)", flush=True)
    return out


def bare_consumer(s: Settings, topic: str, n: int, timeout: float) -> dict:
    """(a) confluent-kafka, batches of ``consume``, one ``json.loads`` per value."""
    spawned = time.monotonic()
    consumer = Consumer({**client_config(s), "group.id": s.prefixed("bare-confluent"),
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen, first, cpu0, busy0 = 0, 0.0, 0.0, 0.0
    try:
        while seen < n:
            if time.monotonic() - spawned > timeout:
                raise TimeoutError(f"bare consumer: {seen} of {n} in {timeout:.0f} s")
            for msg in consumer.consume(1000, 1.0):
                if msg.error():
                    raise RuntimeError(f"bare consumer: {msg.error()}")
                if not seen:
                    first, cpu0, busy0 = time.monotonic(), time.process_time(), machine_busy()
                json.loads(msg.value())
                seen += 1
        done, cpu, busy = time.monotonic(), time.process_time() - cpu0, machine_busy() - busy0
    finally:
        consumer.close()
    return row("a", "confluent", "msg/s", seen, done - first, cpu, busy, done - spawned)


def run_peer(argv: list[str], result: Path, log: Path, timeout: float,
             exits: bool) -> tuple[dict, float]:
    """Run a peer script until it writes ``result`` (and exits, when it ``exits`` by
    itself); its result and when it was spawned (epoch seconds)."""
    spawned = time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        while not result.exists() or (exits and proc.poll() is None):
            if proc.poll() is not None and not result.exists():
                raise RuntimeError(f"{argv[1]} exited with {proc.returncode}; see {log}")
            if time.time() - spawned > timeout:
                raise TimeoutError(f"{argv[1]}: no result in {timeout:.0f} s; see {log}")
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return json.loads(result.read_text()), spawned


def peer_row(contestant: str, name: str, unit: str, found: dict, spawned: float,
             **extra: object) -> dict:
    return row(contestant, name, unit, found["events"], found["done"] - found["first"],
               found["cpu_seconds"], found["machine_busy_seconds"], found["done"] - spawned,
               **extra)


def bare_faust(s: Settings, topic: str, n: int, work: Path, logs: Path,
               timeout: float) -> dict:
    """(b) a Faust agent of its own app id, no state."""
    result = work / "faust.json"
    found, spawned = run_peer(
        [sys.executable, str(HERE / "peer_faust.py"), "--topic", topic, "--events", str(n),
         "--app-id", s.prefixed("bare-faust"), "--port", str(free_port()),
         "--bootstrap", s.kafka_bootstrap, "--datadir", str(work / "faust"),
         "--result", str(result)],
        result, logs / "faust.log", timeout, exits=False)
    return peer_row("b", "faust", "msg/s", found, spawned)


def quix(s: Settings, python: Path, mode: str, topic: str, n: int, work: Path,
         logs: Path, timeout: float) -> dict:
    """(c) Quix Streams in the peer environment: ``bare`` or ``features``."""
    group, result = s.prefixed(f"quix-{mode}"), work / f"quix-{mode}.json"
    output = s.prefixed("fraud.quix-features")
    argv = [str(python), str(HERE / "peer_quix.py"), "--mode", mode, "--topic", topic,
            "--events", str(n), "--group", group, "--bootstrap", s.kafka_bootstrap,
            "--state-dir", str(work / f"quix-{mode}"), "--result", str(result)]
    if mode == "features":
        ensure_topics(s, {output: s.partitions})
        argv += ["--output", output]
    try:
        found, spawned = run_peer(argv, result, logs / f"quix-{mode}.log", timeout,
                                  exits=True)
    finally:
        delete_internal_topics(s, group)
    extra = {}
    if mode == "features":
        records = list(read_topic(s, output))
        extra = {"feature_records": len(records),
                 "feature_names": sorted(json.loads(records[-1].value)) if records else []}
    return peer_row("c", f"quix-{mode}", "events/s" if mode == "features" else "msg/s",
                    found, spawned, stopped_seconds=round(found["stopped"] - found["done"], 2),
                    **extra)


def delete_internal_topics(s: Settings, group: str) -> None:
    """Quix's changelog and repartition topics of ``group``: outside the namespace's
    prefix (``changelog__<group>--...``), so the scratch namespace would leave them."""
    client = admin(s)
    names = [t for t in client.list_topics(timeout=30).topics
             if t.startswith((f"changelog__{group}--", f"repartition__{group}--"))]
    for fut in (client.delete_topics(names, operation_timeout=30).values() if names else []):
        fut.result(30)


def driftline_workers(settings: list[Settings], pipeline: str, n: int, logs: Path,
                      contestant: str, name: str, stall: float, timeout: float,
                      source: Path | None = None) -> dict:
    """(d, e) Worker processes of one consumer group, spawned together, measured from the
    first of them ready (it consumes from then on) until the labels learned over all of
    them reach ``n``."""
    procs: list[ServiceProcess] = []
    for i, s in enumerate(settings):
        log_dir = logs / (f"{name}-{i + 1}" if len(settings) > 1 else name)
        (log_dir / "worker.log").unlink(missing_ok=True)
        procs.append(worker_process(s, log_dir, [pipeline], source))
    urls = [f"http://127.0.0.1:{s.worker_port}/metrics" for s in settings]

    def start(proc: ServiceProcess) -> tuple[float, float, float]:
        proc.start(timeout=300.0)
        return time.monotonic(), cpu_seconds(proc.proc.pid), machine_busy()

    spawned = time.monotonic()
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            started = list(pool.map(start, procs))
        ready, _, busy0 = min(started)
        all_ready = time.monotonic()
        at_all_ready, scored_at, progress, moved = None, None, (-1.0, -1.0), ready
        while True:
            scrapes = [metrics(p, url) for p, url in zip(procs, urls, strict=True)]
            now = time.monotonic()
            learned = [m.value("driftline_labels_learned_total", pipeline=pipeline)
                       for m in scrapes]
            scored = [m.value("driftline_events_total", pipeline=pipeline, kind="event")
                      for m in scrapes]
            if at_all_ready is None:
                at_all_ready = {"seconds": round(all_ready - ready, 2),
                                "labels_learned": sum(learned), "events_scored": sum(scored)}
            if scored_at is None and sum(scored) >= n:
                scored_at = now
            if sum(learned) >= n:
                break
            if (sum(learned), sum(scored)) != progress:
                progress, moved = (sum(learned), sum(scored)), now
            if now - moved > stall or now - ready > timeout:
                print(f"  {name}: INCOMPLETE, {sum(learned):.0f} of {n} labels learned, "
                      f"{sum(scored):.0f} events scored, no progress for {now - moved:.0f} s",
                      flush=True)
                break
            time.sleep(0.5)
        cpu = sum(cpu_seconds(p.proc.pid) - s[1] for p, s in zip(procs, started, strict=True))
        busy = machine_busy() - busy0
    finally:
        for p in procs:
            p.stop()
    duplicates = sum(m.value("driftline_label_duplicates_total", pipeline=pipeline)
                     for m in scrapes)
    if now > all_ready:  # the rate once every worker consumed, for several
        at_all_ready["rate"] = round((sum(learned) - at_all_ready["labels_learned"])
                                     / (now - all_ready), 1)
    return row(contestant, name, "labeled events/s", n, now - ready, cpu, busy, now - spawned,
               complete=sum(learned) >= n, labels_learned=sum(learned),
               events_scored=sum(scored), label_duplicates=duplicates,
               scored_seconds=round(scored_at - ready, 2) if scored_at else None,
               scored_rate=round(n / (scored_at - ready), 1) if scored_at else None,
               at_all_ready=at_all_ready if len(procs) > 1 else None,
               by_worker=[{"ready_seconds": round(s[0] - spawned, 2), "labels_learned": lrn,
                           "events_scored": sc}
                          for s, lrn, sc in zip(started, learned, scored, strict=True)],
               logs=[str(p.log_path) for p in procs])


def metrics(proc: ServiceProcess, url: str) -> Scrape:
    """A worker's /metrics; a worker that died says so, with its log."""
    try:
        return scrape(url)
    except OSError as exc:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.proc.returncode} while measured; "
                               f"see {proc.log_path}") from exc
        raise


# ---- the run -------------------------------------------------------------------------------

def backlog(s: Settings, pipeline: str, emissions: list) -> PipelineTopics:
    topics = ensure_pipeline_topics(s, pipeline)
    report = produce(s, pipeline, emissions, speed=None)
    print(f"produced {report.events} events and {report.labels} labels of {pipeline} into "
          f"{s.namespace} in {report.seconds:.1f} s", flush=True)
    return topics


def history(pipeline: str, n: int, now: float) -> list:
    return list(pipeline_history(PIPELINES[pipeline], n, now, seed=1)[1])


def distinct_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def forget_worker_state(s: Settings) -> None:
    """The worker's local table state of a scratch namespace (its topics are gone)."""
    shutil.rmtree(s.data_dir / "worker" / s.app_id, ignore_errors=True)


def run(base: Settings, args: argparse.Namespace, only: str) -> tuple[list[dict], dict]:
    python = peer_python(args.peer_venv) if "c" in only else None
    versions = {"python": platform.python_version(), "kafka": base.kafka_version,
                "confluent-kafka": version("confluent-kafka"),
                "faust-streaming": version("faust-streaming")}
    if python:
        versions["quixstreams"] = peer_version(python, "quixstreams")
        versions["confluent-kafka (peer venv)"] = peer_version(python, "confluent-kafka")
    logs = base.data_dir / "logs" / "bench-ingest"
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    now = time.time()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ingest-")))
        run_id = uuid.uuid4().hex[:6]

        def namespace(suffix: str) -> Settings:
            """A scratch namespace of this run: a consumer group and worker state of its
            own, so that each worker starts cold."""
            s = stack.enter_context(scratch_namespace(
                base, base.prefixed(f"bench-ingest-{run_id}{suffix}"), worker_port=free_port()))
            stack.callback(forget_worker_state, s)
            return s

        events = history("fraud", args.events, now)
        s = namespace("")
        topics = backlog(s, "fraud", events) if set(only) & set("abcd") else None
        if "d" in only and args.knn_events > 0:
            knn = namespace("-knn")
            backlog(knn, "fraud_knn", history("fraud_knn", args.knn_events, now))
        if "e" in only:
            pair = namespace("-x2")
            backlog(pair, "fraud", events)
        if args.ref:
            before = namespace("-ref")
            backlog(before, "fraud", events)
        del events
        n, timeout = args.events, args.timeout
        if "a" in only:
            print("(a) bare confluent-kafka consumer", flush=True)
            rows.append(bare_consumer(s, topics.events, n, timeout))
        if "b" in only:
            print("(b) bare Faust agent", flush=True)
            rows.append(bare_faust(s, topics.events, n, work, logs, timeout))
        if "c" in only:
            print("(c) Quix Streams", flush=True)
            for mode in ("bare", "features"):
                rows.append(quix(s, python, mode, topics.events, n, work, logs, timeout))
        if "d" in only:
            print("(d) Driftline worker", flush=True)
            rows.append(driftline_workers([s], "fraud", n, logs, "d", "driftline",
                                          args.stall, timeout))
            if args.knn_events > 0:
                rows.append(driftline_workers([knn], "fraud_knn", args.knn_events, logs, "d",
                                              "driftline-knn", args.stall, timeout))
        if args.ref:
            print(f"(d) Driftline worker at {args.ref}", flush=True)
            tree = checkout(args.ref, work / "ref")
            stack.callback(subprocess.run, ["git", "-C", str(REPO), "worktree", "remove",
                                            "--force", str(tree)], check=False)
            # That revision's own defaults for the settings whose defaults changed since.
            rows.append(driftline_workers(
                [before.with_overrides(**REF_DEFAULTS)], "fraud", n, logs, "d",
                f"driftline@{args.ref}", args.stall, timeout, source=tree))
        if "e" in only:
            print("(e) two Driftline workers, one consumer group", flush=True)
            second = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="bench-ingest-worker2-", dir=base.data_dir)))
            first_port, second_port = distinct_ports(2)
            first = pair.with_overrides(worker_port=first_port)
            rows.append(driftline_workers(
                [first, first.with_overrides(worker_port=second_port, data_dir=second,
                                             registry_uri=first.registry_uri,
                                             registry_artifacts=first.registry_artifacts)],
                "fraud", n, logs, "e", "driftline-x2", args.stall, timeout))
    return rows, versions


def checkout(ref: str, path: Path) -> Path:
    """A work tree of this repository at ``ref`` (``git worktree``), to run its worker."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref],
                   check=True, capture_output=True)
    return path


def add_ratios(rows: list[dict]) -> None:
    refs = {r["contestant"]: r["rate"] for r in rows if r["contestant"] in "ab"}
    for r in rows:
        for ref, rate in refs.items():
            r[f"vs_{ref}"] = round(r["rate"] / rate, 5)


def machine(sample: float = 2.0) -> dict:
    """What the figures ran on, and how busy it was just before (other work running on a
    2-core machine lowers every rate)."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                  if line.startswith("model name")), platform.processor() or "unknown")
    busy = machine_busy()
    time.sleep(sample)
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "busy_cores_before_start": round((machine_busy() - busy) / sample, 2)}


def ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value >= 1 else f"{value:.3g} (1/{1 / value:,.0f})"


def print_table(rows: list[dict], fresh: dict | None, info: dict) -> None:
    print()
    print(f"{'':2} {'contestant':<15} {'rate':>9} {'unit':<17} {'cores':>5} {'machine':>7} "
          f"{'cold s':>7} {'vs a':>18} {'vs b':>18}")
    for r in rows:
        print(f"{r['contestant']:<2} {r['name']:<15} {r['rate']:>9,.0f} {r['unit']:<17} "
              f"{r['cores']:>5.2f} {r['machine_cores']:>7.2f} {r['cold_seconds']:>7.1f} "
              f"{ratio(r.get('vs_a')):>18} {ratio(r.get('vs_b')):>18}"
              + ("" if r.get("complete", True) else "  INCOMPLETE"))
        if r.get("scored_rate"):
            print(f"{'':3}{'':<15} {r['scored_rate']:>9,.0f} {'events scored/s':<17} "
                  f"(all {r['events']} scored {r['scored_seconds']:.1f} s after ready)")
        if r.get("at_all_ready"):
            both = r["at_all_ready"]
            print(f"{'':3}{'':<15} {both['rate']:>9,.0f} {'labeled events/s':<17} "
                  f"once all were ready, {both['seconds']:.1f} s after the first (by then "
                  f"{both['events_scored']:.0f} events scored, {both['labels_learned']:.0f} "
                  "learned)")
    if fresh:
        print(f"\nfreshness at {fresh['offered_rate']:g} events/s offered "
              f"({fresh['achieved_rate']:g} achieved): p50 {fresh['freshness_p50_ms']} ms, "
              f"p99 {fresh['freshness_p99_ms']} ms; bare consumer p50 "
              f"{fresh['kafka_baseline_p50_ms']} ms, p99 {fresh['kafka_baseline_p99_ms']} ms; "
              f"ratio p50 {fresh['ratio_p50']}, p99 {fresh['ratio_p99']}")
    print(f"\nmachine: {info['nproc']} CPUs, {info['cpu_model']}, Python {info['python']}; "
          f"before the run: {info['busy_cores_before_start']} cores busy, load average "
          f"{info['load_average_at_start']}")
    print("cores: the contestant's own CPU over its measured span (all its threads); "
          "machine: the whole machine's (broker, Redis, Milvus, anything else)")
    if info["busy_cores_before_start"] > QUIET:
        print(f"WARNING: {info['busy_cores_before_start']} cores were busy before the run "
              "started: other work shares the machine, rerun on a quiet one before quoting "
              "absolute figures")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=30_000,
                   help="fraud events in the backlog (and as many labels)")
    p.add_argument("--knn-events", type=int, default=10_000,
                   help="events of the fraud_knn backlog (d); 0 skips it")
    p.add_argument("--only", default=",".join(CONTESTANTS),
                   help="contestants to run, e.g. a,b,d (default: all)")
    p.add_argument("--no-freshness", action="store_true", help="skip the freshness run")
    p.add_argument("--ref", default="",
                   help="also run the worker of this git revision (a baseline) on the backlog")
    p.add_argument("--freshness-rate", type=float, default=1000.0, help="events/s offered")
    p.add_argument("--freshness-seconds", type=float, default=30.0)
    p.add_argument("--peer-venv", type=Path,
                   help="Quix Streams' environment (default: <cache dir>/peer-venv)")
    p.add_argument("--stall", type=float, default=120.0,
                   help="a worker making no progress for this long is stopped, incomplete")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds, per contestant")
    args = p.parse_args()
    only = "".join(sorted(set(args.only.replace(",", "").replace(" ", ""))))
    if not only or set(only) - set(CONTESTANTS):
        p.error(f"--only: letters among {', '.join(CONTESTANTS)}")
    args.only = only
    return args


def main() -> None:
    args = parse_args()
    base = Settings.from_env()
    args.peer_venv = args.peer_venv or base.cache_dir / "peer-venv"
    LocalStack(base).up()
    info = machine()
    if info["busy_cores_before_start"] > QUIET:
        print(f"WARNING: {info['busy_cores_before_start']} cores busy before the run",
              flush=True)
    started = time.monotonic()
    rows, versions = run(base, args, args.only)
    fresh = None
    if not args.no_freshness:
        print(f"freshness at {args.freshness_rate:g} events/s ({args.freshness_seconds:g} s)",
              flush=True)
        fresh = measure_freshness(base.with_overrides(worker_port=free_port()), "fraud",
                                  args.freshness_rate, args.freshness_seconds)
    add_ratios(rows)
    print_table(rows, fresh, info)
    command = shlex.join(["python", "benchmarks/ingest.py", *sys.argv[1:]])
    print(f"reproduce: {command}")
    result = {
        "command": command, "arguments": {k: str(v) if isinstance(v, Path) else v
                                          for k, v in vars(args).items()},
        "machine": info, "versions": versions, "git": git_commit(),
        "run_seconds": round(time.monotonic() - started, 1),
        "measured": "rate: records / seconds, from the first record read (a, b, c) or the "
                    "first worker's /healthz answering (d, e) to the N-th record read (a, b), "
                    "processed (c) or label learned (d, e); cold_seconds: from the process "
                    "spawned to done; cores: the contestant's CPU seconds over the same span "
                    "/ seconds; machine_cores: the whole machine's",
        "contestants": rows, "freshness": fresh,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "ingest.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
