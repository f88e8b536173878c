"""Candidate models on ``fraud``: which model would a retrain pick, and at what cost?

    python benchmarks/candidates.py --seeds 1 2 3 4 5

No services: the fraud generator's events and delayed labels (``--events`` of them, per
seed) go through the worker's own code offline. The features come from
:func:`streams.parity.recompute` (the worker's :class:`~streams.engine.FeatureEngine`), the
champion's served scores from the declared model run online in emission order (predict
when the event comes, learn when its label does: :func:`benchmarks.parity.in_process`),
and each label makes one :class:`~streams.schemas.TrainingExample`, in label order, as on
``fraud.training``. On that log, :func:`online_models.retrain.retrain` itself trains every
candidate on the same window, evaluates each prequentially on the hold-out, picks the
best by the pipeline's retrain metric (ROC AUC) and compares it with the champion's served
scores; it runs twice per seed:

* ``declared``: fraud's own retrain policy (a window of 3,000 examples, the newest 1,000
  the hold-out: about 25 frauds in it);
* ``wide``: ``--window`` and ``--holdout`` (12,000 and 4,000: about 100 frauds).

The candidates: the champion's model (``fraud_logistic``, a standardized logistic
regression), a Hoeffding adaptive tree, an adaptive random forest of 5 trees, and a kNN
(20 neighbours among the last 2,000 standardized examples: the neighbour feature's idea,
in-process). Once (the first seed, the wide window's training split), each candidate's
cost where it would serve: a ``learn_one`` and a ``predict_proba_one`` (the learner and
every scorer pay those per label and per event), an explanation
(:func:`online_models.explain.contributions`: one prediction per feature), and the
pickled snapshot the learner publishes every 0.1 s.

Prints a table and writes ``benchmarks/results/candidates.json``: every run's figures,
the mean and standard deviation over the seeds, and the machine.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root for `benchmarks`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from river import base, compose, forest, neighbors, preprocessing, tree

from benchmarks.api_load import git_commit
from benchmarks.ingest import machine
from benchmarks.parity import in_process
from online_models.explain import contributions
from online_models.retrain import retrain, train_candidate
from online_models.spec import predict
from streams.catalog.fraud import FRAUD
from streams.declarations import ModelRef, PipelineSpec, model_name
from streams.generators import generate
from streams.parity import recompute
from streams.schemas import TrainingExample

RESULTS = Path(__file__).resolve().parent / "results"


def fraud_tree() -> base.Classifier:
    """A Hoeffding adaptive tree: splits after 50 examples a leaf (River's 200 left it a
    single leaf on a 3,000-example window with 3% frauds), a seed for repeatable runs."""
    return tree.HoeffdingAdaptiveTreeClassifier(grace_period=50, seed=42)


def fraud_forest() -> base.Classifier:
    """An adaptive random forest of 5 Hoeffding trees (River's default is 10: half the
    cost on 2 cores), a seed for repeatable runs."""
    return forest.ARFClassifier(n_models=5, seed=42)


def fraud_neighbours() -> base.Classifier:
    """Nearest neighbours: the fraud share among the 20 nearest of the last 2,000
    standardized examples, weighted by distance."""
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        neighbors.KNNClassifier(n_neighbors=20,
                                engine=neighbors.LazySearch(window_size=2000)))


# By the import path a declaration would name them with (the champion's first).
CANDIDATES: dict[str, ModelRef] = {
    "logistic (champion's)": FRAUD.model,
    "Hoeffding adaptive tree": "benchmarks.candidates:fraud_tree",
    "adaptive random forest": "benchmarks.candidates:fraud_forest",
    "kNN": "benchmarks.candidates:fraud_neighbours",
}
LABELS = {model_name(ref): label for label, ref in CANDIDATES.items()}


def training_log(spec: PipelineSpec, events: int, seed: int) -> list[TrainingExample]:
    """The pipeline's training log for a generated stream, as the worker would write it:
    one example a label, in label order, with the champion's served score."""
    _, stream = generate(spec.generator, events=events, seed=seed, run_id=f"cand{seed}")
    emissions = list(stream)
    by_id = {spec.event_id_of(e.record): e.record for e in emissions if e.kind == "event"}
    features = recompute(spec, by_id.values())
    scores = in_process(spec, emissions, features)
    log = []
    for e in emissions:
        event_id = spec.event_id_of(e.record)
        if e.kind != "label" or event_id not in features:
            continue
        event = by_id[event_id]
        log.append(TrainingExample(
            event_id=event_id, entity=spec.entity_of(event), event_time=spec.time_of(event),
            features=features[event_id], score=scores[event_id], model_version="v0.1",
            label=spec.target_of(e.record), label_time=float(e.record.ts)))
    return log


def with_candidates(window: int, holdout: int) -> PipelineSpec:
    """``fraud`` with every candidate beside its model, and this retrain window."""
    refs = list(CANDIDATES.values())
    return replace(FRAUD, model=refs[0], candidates=tuple(refs[1:]),
                   retrain=replace(FRAUD.retrain, window=window, holdout=holdout))


def run_seed(seed: int, events: int, windows: dict[str, tuple[int, int]]) -> dict:
    started = time.perf_counter()
    log = training_log(FRAUD, events, seed)
    out = {"seed": seed, "examples": len(log), "frauds": sum(ex.label for ex in log),
           "log_seconds": round(time.perf_counter() - started, 2), "windows": {}}
    for name, (window, holdout) in windows.items():
        outcome = retrain(with_candidates(window, holdout), log)
        out["windows"][name] = {
            "window": window, "holdout": holdout,
            "holdout_frauds": sum(ex.label for ex in log[-outcome.holdout_examples:]),
            "picked": LABELS[outcome.spec], "promote": outcome.promote,
            "champion": outcome.champion,
            "candidates": {LABELS[k]: {**v, "seconds": round(outcome.seconds[k], 3)}
                           for k, v in outcome.candidates.items()},
            "failed": outcome.failed}
        print(f"seed {seed} {name}: picked {LABELS[outcome.spec]}, "
              + ", ".join(f"{LABELS[k]} {v[outcome.metric]:.4f} in {outcome.seconds[k]:.1f} s"
                          for k, v in outcome.candidates.items())
              + f"; champion {outcome.champion[outcome.metric]:.4f}", flush=True)
    return out


def serving_cost(log: list[TrainingExample], window: int, holdout: int,
                 sample: int = 300) -> dict[str, dict[str, float]]:
    """Per candidate, trained on the window's training split: the microseconds of one
    learn and one prediction, the milliseconds of one explanation, its pickle's size."""
    spec = with_candidates(window, holdout)
    examples = log[-window:]
    train, rest = examples[:-holdout], examples[-holdout:][:sample]
    out = {}
    for label, ref in CANDIDATES.items():
        model, _ = train_candidate(spec, ref, train, [])
        started = time.perf_counter()
        for ex in rest:
            predict(model, "binary", ex.features)
        predict_us = (time.perf_counter() - started) / len(rest) * 1e6
        started = time.perf_counter()
        for ex in rest[:100]:
            contributions(model, "binary", ex.features, top=5)
        explain_ms = (time.perf_counter() - started) / min(100, len(rest)) * 1e3
        started = time.perf_counter()
        blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        pickle_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        for ex in rest:
            model.learn_one(ex.features, bool(ex.label))
        learn_us = (time.perf_counter() - started) / len(rest) * 1e6
        out[label] = {"learn_us": round(learn_us, 1), "predict_us": round(predict_us, 1),
                      "explain_ms": round(explain_ms, 2), "snapshot_kb": round(len(blob) / 1024),
                      "pickle_ms": round(pickle_ms, 2)}
    return out


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(runs: list[dict]) -> dict:
    """Per window and candidate, each figure's mean and spread over the seeds, and how often
    the retrain picked it."""
    out = {}
    for name in runs[0]["windows"]:
        per = [r["windows"][name] for r in runs]
        rows = {label: {fig: mean_sd([p["candidates"][label][fig] for p in per])
                        for fig in per[0]["candidates"][label]}
                for label in per[0]["candidates"]}
        for label in rows:
            rows[label]["picked"] = sum(p["picked"] == label for p in per)
            rows[label]["roc_auc_minus_logistic"] = mean_sd(
                [p["candidates"][label]["roc_auc"]
                 - p["candidates"]["logistic (champion's)"]["roc_auc"] for p in per])
        rows["champion (served)"] = {fig: mean_sd([p["champion"][fig] for p in per])
                                     for fig in per[0]["champion"]}
        out[name] = {"window": per[0]["window"], "holdout": per[0]["holdout"],
                     "holdout_frauds": mean_sd([p["holdout_frauds"] for p in per]),
                     "promoted": sum(p["promote"] for p in per), "candidates": rows}
    return out


def print_table(summary: dict, cost: dict | None, seeds: int) -> None:
    for name, w in summary.items():
        print(f"\n{name}: window {w['window']:,}, hold-out {w['holdout']:,} "
              f"({w['holdout_frauds']['mean']:.0f} frauds), {seeds} seeds, mean ± sd; "
              f"promoted over the champion in {w['promoted']} of {seeds}")
        print(f"{'candidate':<24} {'ROC AUC':>16} {'vs logistic':>16} {'log loss':>16} "
              f"{'accuracy':>16} {'train s':>12} {'picked':>7}")
        for label, row in w["candidates"].items():
            def cell(fig, digits=4, row=row):
                if fig not in row:
                    return "-"
                return f"{row[fig]['mean']:.{digits}f} ± {row[fig]['sd']:.{digits}f}"
            print(f"{label:<24} {cell('roc_auc'):>16} {cell('roc_auc_minus_logistic'):>16} "
                  f"{cell('log_loss'):>16} {cell('accuracy'):>16} {cell('seconds', 2):>12} "
                  f"{row.get('picked', '-'):>7}")
    if cost:
        print(f"\n{'candidate':<24} {'learn µs':>9} {'predict µs':>10} {'explain ms':>10} "
              f"{'snapshot KB':>11} {'pickle ms':>9}")
        for label, c in cost.items():
            print(f"{label:<24} {c['learn_us']:>9,.0f} {c['predict_us']:>10,.0f} "
                  f"{c['explain_ms']:>10.2f} {c['snapshot_kb']:>11,} {c['pickle_ms']:>9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--events", type=int, default=16_000,
                    help="events (and labels) generated per seed")
    ap.add_argument("--window", type=int, default=12_000, help="the wide window")
    ap.add_argument("--holdout", type=int, default=4_000, help="the wide window's hold-out")
    ap.add_argument("--no-cost", action="store_true", help="skip the serving costs")
    args = ap.parse_args()
    info = machine()
    started = time.perf_counter()
    windows = {"declared": (FRAUD.retrain.window, FRAUD.retrain.holdout),
               "wide": (args.window, args.holdout)}
    runs = [run_seed(seed, args.events, windows) for seed in args.seeds]
    cost = None
    if not args.no_cost:
        cost = serving_cost(training_log(FRAUD, args.events, args.seeds[0]), args.window,
                            args.holdout)
    summary = summarize(runs)
    print_table(summary, cost, len(args.seeds))
    result = {"args": vars(args), "machine": info, **git_commit(),
              "candidates": {label: model_name(ref) for label, ref in CANDIDATES.items()},
              "metric": FRAUD.retrain_metric, "summary": summary, "cost": cost, "runs": runs,
              "seconds": round(time.perf_counter() - started, 1)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "candidates.json").write_text(json.dumps(result, indent=2))
    print(f"\n{result['seconds']} s; written to {RESULTS / 'candidates.json'}")


if __name__ == "__main__":
    main()
