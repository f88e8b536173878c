"""Milvus Lite at scale: upserts per second, search latency and memory at 100k and 1M vectors.

    python benchmarks/vector_scale.py --sizes 100000 1000000

Starts a Milvus Lite server of its own (``milvus-lite server``, as ``driftline stack up``
does, on a free port and a temporary data directory, so that its memory is the
benchmark's alone), makes the fraud pipeline's events collection as declared (15
dimensions, HNSW, L2), and grows it to each size in batches upserted through the asyncio
client, as the embedding agent writes. At each size it measures:

* upserts per second (rows / wall time of the batches and of the flushes the embedding
  agent makes every ``DRIFTLINE_VECTOR_SEAL_ROWS``, sequential);
* the first search (it waits for the index to catch up), then ``--queries`` sequential
  searches for the 10 nearest (p50, p99), with and without a ``label`` filter;
* recall@10 of the index against an exact numpy search, and that numpy search's own
  latency in this process: the baseline the ratios are taken against;
* the server's resident memory (VmRSS) and its peak (VmHWM).

Vectors are standard normal in 15 dimensions (the embedding agent's vectors are
standardized); 3% of rows are labeled positive. Prints and writes
``benchmarks/results/vector-scale.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from driftline.adapters.config import Settings
from driftline.adapters.vectors import VectorStore, collection_names, ensure_collections
from driftline.tools.host import free_port
from driftline.tools.stack import LocalStack
from streams.catalog.fraud import FRAUD
from streams.embeddings import EventEmbedder

RESULTS = Path(__file__).resolve().parent / "results"
K = 10


def memory_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000, q))


async def grow_and_measure(settings: Settings, pid: int, sizes: list[int], batch: int,
                           queries: int, seed: int) -> list[dict]:
    ensure_collections(settings, FRAUD)
    store = VectorStore(settings, FRAUD)
    dim = EventEmbedder(FRAUD).dim
    rng = np.random.default_rng(seed)
    data = np.empty((max(sizes), dim), dtype=np.float32)
    labels = rng.random(max(sizes)) < 0.03
    probes = rng.standard_normal((queries, dim)).astype(np.float32)
    out, have = [], 0
    for size in sizes:
        upsert_seconds = 0.0
        while have < size:
            n = min(batch, size - have)
            chunk = rng.standard_normal((n, dim)).astype(np.float32)
            data[have:have + n] = chunk
            rows = [{"id": f"e{have + i}", "vector": chunk[i].tolist(), "entity": f"c{i % 5000}",
                     "label": float(labels[have + i]), "event_time": float(have + i),
                     "score": 0.0, "model_version": "v0.0", "offset": have + i}
                    for i in range(n)]
            started = time.perf_counter()
            await store.upsert_events(rows)
            have += n
            if have % settings.vector_seal_rows < n:  # as the embedding agent seals
                await store.seal()
            upsert_seconds += time.perf_counter() - started
        grown = size - (out[-1]["vectors"] if out else 0)
        started = time.perf_counter()
        await store.search_events(probes[0].tolist(), K)
        first = time.perf_counter() - started
        plain, filtered, recall = [], [], []
        exact_seconds = []
        for q in probes:
            started = time.perf_counter()
            hits = await store.search_events(q.tolist(), K)
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.search_events(q.tolist(), K, label=True)
            filtered.append(time.perf_counter() - started)
            started = time.perf_counter()
            d = ((data[:size] - q) ** 2).sum(axis=1)
            exact = np.argpartition(d, K)[:K]
            exact_seconds.append(time.perf_counter() - started)
            truth = {f"e{i}" for i in exact}
            recall.append(len(truth & {h["id"] for h in hits}) / K)
        row = {
            "vectors": size,
            "upserts_per_second": round(grown / upsert_seconds),
            "first_search_ms": round(first * 1000, 1),
            "search_ms": {"p50": round(percentile(plain, 50), 2),
                          "p99": round(percentile(plain, 99), 2)},
            "filtered_search_ms": {"p50": round(percentile(filtered, 50), 2),
                                   "p99": round(percentile(filtered, 99), 2)},
            "recall_at_10": round(float(np.mean(recall)), 4),
            "numpy_exact_ms_p50": round(percentile(exact_seconds, 50), 2),
            "search_p50_over_numpy_p50": round(percentile(plain, 50)
                                               / percentile(exact_seconds, 50), 3),
            "server_memory_mb": {k: round(v) for k, v in memory_mb(pid).items()},
            "raw_vectors_mb": round(size * dim * 4 / 2**20, 1),
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    await store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="driftline-vectors-") as tmp:
        s = Settings.from_env().with_overrides(data_dir=Path(tmp), milvus_port=free_port(),
                                               namespace="bench")
        stack = LocalStack(s)
        stack.up(services=("milvus",))
        try:
            pid = stack.pid("milvus")
            idle = memory_mb(pid)
            rows = asyncio.run(grow_and_measure(s, pid, sorted(args.sizes), args.batch,
                                                args.queries, args.seed))
        finally:
            stack.down(services=("milvus",))
    policy = FRAUD.embeddings
    result = {"collection": collection_names(s, "fraud")[0], "dim": EventEmbedder(FRAUD).dim,
              "index": policy.index, "index_params": dict(policy.index_params),
              "search_params": dict(policy.search_params), "metric": policy.metric,
              "batch": args.batch, "queries": args.queries, "idle_server_memory_mb": idle,
              "sizes": rows}
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vector-scale.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
