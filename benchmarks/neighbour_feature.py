"""Does the neighbour feature help? Prequential ROC AUC on the fraud stream, with and without.

    python benchmarks/neighbour_feature.py --events 20000 --seed 7

The fraud generator's events and delayed labels, in emission order, go through the same
code as the worker: :class:`~streams.engine.FeatureEngine` for the features, the
pipeline's River model, predict first and learn when the label comes. Labeled events are
embedded by :class:`~streams.embeddings.EventEmbedder` (its standardizer frozen after
``fit_rows`` labels) and written to Milvus (the stack's Milvus Lite server, in a
collection of a scratch namespace) in batches of ``--batch`` labels, as the embedding
agent writes them. Three scorers see the same events:

* ``without``: the declared fraud model on the declared features;
* ``with``: the same model plus the neighbour feature (the fraud rate among the k
  nearest labeled events, searched in Milvus when the event is scored);
* ``with_log_odds``: the same, the neighbour evidence as smoothed log-odds
  ``log((frauds + 0.5) / (others + 0.5))``, the scale a logistic model adds up;
* ``knn_alone``: the neighbour feature itself as the score.

Prints and writes ``benchmarks/results/neighbour-feature-<seed>.json``: ROC AUC and log
loss over the events scored once there were labeled neighbours, and over those of the
second half of the stream. As in the worker, an event scored before that gets no
neighbour feature at all (a missing feature, not a zero).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import uuid
from dataclasses import replace
from pathlib import Path

from driftline.adapters.config import Settings
from driftline.adapters.vectors import VectorStore, ensure_collections
from driftline.tools.namespaces import scratch_namespace
from driftline.tools.stack import LocalStack
from online_models import evaluation
from online_models.spec import build_model, predict
from streams.catalog.fraud import FRAUD
from streams.declarations import EmbeddingPolicy
from streams.embeddings import EventEmbedder, neighbour_rate
from streams.engine import DuplicateEvent, FeatureEngine, LateEvent
from streams.generators import generate

RESULTS = Path(__file__).resolve().parent / "results"
NEIGHBOUR = "fraud_rate_knn"
SCORERS = ("without", "with", "with_log_odds", "knn_alone")


async def run(settings: Settings, events: int, seed: int, k: int, batch: int) -> dict:
    spec = replace(FRAUD, embeddings=replace(FRAUD.embeddings or EmbeddingPolicy(),
                                             neighbour_feature=NEIGHBOUR, neighbours=k))
    await asyncio.to_thread(ensure_collections, settings, spec)
    store = VectorStore(settings, spec)
    engine, embedder = FeatureEngine(spec), EventEmbedder(spec)
    models = {name: build_model(spec.model) for name in ("without", "with", "with_log_odds")}
    metrics = {name: evaluation.new_metrics("binary", ("roc_auc", "log_loss"))
               for name in SCORERS}
    late = {name: evaluation.new_metrics("binary", ("roc_auc", "log_loss")) for name in SCORERS}
    states, served, pending, warmup = {}, {}, [], []
    labels = positives = unsealed = 0
    search_seconds: list[float] = []
    _, emissions = generate("fraud", events=events, seed=seed, run_id=f"nf{seed}")
    seen_events = 0
    for e in emissions:
        if e.kind == "event":
            rec = e.record
            entity = spec.entity_of(rec)
            try:
                states[entity], x = engine.observe(states.get(entity), rec)
            except (LateEvent, DuplicateEvent):
                continue
            seen_events += 1
            # As the worker does: no neighbour feature until there are neighbours.
            hits = []
            if embedder.frozen:
                started = time.perf_counter()
                hits = await store.search_events(embedder.vector(x), k)
                search_seconds.append(time.perf_counter() - started)
            inputs = {"without": x, "with": dict(x), "with_log_odds": dict(x)}
            knn = 0.0
            if hits:
                knn = neighbour_rate([h["label"] for h in hits])
                pos = sum(h["label"] for h in hits)
                inputs["with"][NEIGHBOUR] = knn
                inputs["with_log_odds"][NEIGHBOUR] = math.log((pos + 0.5)
                                                              / (len(hits) - pos + 0.5))
            scores = {name: predict(model, "binary", inputs[name])
                      for name, model in models.items()}
            served[rec.event_id] = (inputs, {**scores, "knn_alone": knn},
                                    seen_events > events // 2, bool(hits))
            continue
        item = served.pop(e.record.event_id, None)
        if item is None:
            continue
        inputs, scores, second_half, had_neighbours = item
        x = inputs["without"]
        y = bool(e.record.is_fraud)
        labels += 1
        positives += y
        if had_neighbours:  # scored after the warm-up: the scorers are comparable
            for name in SCORERS:
                evaluation.update(metrics[name], "binary", y, scores[name])
                if second_half:
                    evaluation.update(late[name], "binary", y, scores[name])
        for name, model in models.items():
            model.learn_one(inputs[name], y)
        row = (e.record.event_id, rec_entity(x, e), y, x)
        if not embedder.frozen:
            warmup.append(row)
            if embedder.fit_one(x):
                pending.extend(warmup)
        else:
            pending.append(row)
        if embedder.frozen and len(pending) >= batch:
            await store.upsert_events([_row(embedder, r) for r in pending])
            unsealed += len(pending)
            pending = []
            if unsealed >= settings.vector_seal_rows:  # as the embedding agent seals
                await store.seal()
                unsealed = 0
    await store.close()
    return {
        "events": events, "seed": seed, "k": k, "batch": batch, "labels": labels,
        "positive_rate": positives / max(labels, 1), "fit_rows": embedder.fit_rows,
        "after_warmup": {n: evaluation.values(ms) for n, ms in metrics.items()},
        "second_half": {n: evaluation.values(ms) for n, ms in late.items()},
        "search_ms_median": 1000 * sorted(search_seconds)[len(search_seconds) // 2]
        if search_seconds else None,
    }


def rec_entity(x: dict, e) -> str:
    return e.record.event_id.rsplit("-", 1)[0]  # the entity is not used for the search


def _row(embedder: EventEmbedder, row) -> dict:
    event_id, entity, y, x = row
    return {"id": event_id, "vector": embedder.vector(x), "entity": entity, "label": float(y),
            "event_time": 0.0, "score": 0.0, "model_version": "", "offset": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch", type=int, default=200)
    args = ap.parse_args()
    base = Settings.from_env()
    LocalStack(base).up()
    started = time.perf_counter()
    with scratch_namespace(base, f"bnf{uuid.uuid4().hex[:6]}") as s:
        result = asyncio.run(run(s, args.events, args.seed, args.k, args.batch))
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"neighbour-feature-{args.seed}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
