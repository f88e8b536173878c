"""What ``driftline validate`` and ``driftline schema`` tell of the declared pipelines.

:func:`problems` checks what a :class:`~streams.declarations.PipelineSpec` cannot check
when it is declared (its models are built only when a learner starts): each model factory
gives a fresh River estimator of the pipeline's task, the metrics and the drift detector
exist, the schemas have a JSON schema. :func:`describe` tells a pipeline as an operator
reads it: topics (namespaced as the settings say), features, model, policies.
:func:`json_schemas` is what a producer must send: the JSON Schema of the events and
labels, by their JSON names (aliases), as the API's OpenAPI document has them.

>>> from streams.catalog.fraud import FRAUD
>>> problems(FRAUD)
[]
>>> sorted(json_schemas(FRAUD)["event"]["required"])
['amount', 'card_id', 'event_id', 'merchant_id', 'ts']
>>> print(describe(FRAUD, namespace="t1").splitlines()[0])
fraud (binary): card payments scored for fraud; labels arrive with chargebacks
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from river import base

from monitoring.drift import ConceptDriftMonitor
from online_models.evaluation import METRICS
from online_models.spec import build_model
from streams.declarations import (
    Agg,
    Derived,
    Ewma,
    Feature,
    FirstSeen,
    ModelRef,
    PipelineSpec,
    Raw,
    SincePrevious,
    model_name,
)
from streams.pipelines import PIPELINES
from streams.topics import PipelineTopics

KINDS = {"binary": (base.Classifier, "classifier"), "regression": (base.Regressor, "regressor")}


def json_schemas(spec: PipelineSpec) -> dict[str, Any]:
    """The JSON Schema of the pipeline's events and labels, field names as the JSON has
    them: the same schema the OpenAPI document gives the scoring route's body."""
    return {"event": spec.event_type.model_json_schema(by_alias=True),
            "label": spec.label_type.model_json_schema(by_alias=True)}


def problems(spec: PipelineSpec) -> list[str]:
    """What is wrong with ``spec`` beyond what its declaration checks: each a sentence."""
    found: list[str] = []
    models: list[tuple[str, ModelRef]] = [("model", spec.model)]
    models += [(f"candidates[{i}]", m) for i, m in enumerate(spec.candidates)]
    if spec.retrain.model is not None:
        models.append(("retrain.model", spec.retrain.model))
    if spec.fallback is not None and spec.fallback.model is not None:
        models.append(("fallback.model", spec.fallback.model))
    kind, noun = KINDS.get(spec.task, (None, spec.task))
    for where, ref in models:
        try:
            model = build_model(ref)
        except Exception as exc:  # noqa: BLE001 - a factory is the user's code
            found.append(f"{where} {model_name(ref)}: {type(exc).__name__}: {exc}")
            continue
        if kind is not None and not isinstance(model, kind):
            found.append(f"{where} {model_name(ref)} gives a {type(model).__name__}, not a "
                         f"River {noun} (the task is {spec.task})")
    known = METRICS.get(spec.task, {})
    if spec.task not in METRICS:
        found.append(f"task {spec.task!r} is not one of {sorted(METRICS)}")
    elif unknown := [m for m in spec.metrics if m not in known]:
        found.append(f"metrics {unknown} are not {spec.task} metrics; choose from "
                     f"{sorted(known)}")
    if not spec.metrics:
        found.append("no metrics declared")
    try:
        ConceptDriftMonitor(spec.drift.concept, **dict(spec.drift.concept_params))
    except Exception as exc:  # noqa: BLE001 - River's own check of the parameters
        found.append(f"drift: {type(exc).__name__}: {exc}")
    for which, record in (("event", spec.event_type), ("label", spec.label_type)):
        try:
            record.model_json_schema(by_alias=True)
        except Exception as exc:  # noqa: BLE001 - a field type pydantic cannot describe
            found.append(f"the {which} schema {record.__name__} has no JSON schema: {exc}")
    return found


def feature_line(f: Feature) -> str:
    """One feature, as a declaration reads.

    >>> from streams.declarations import Sliding
    >>> feature_line(Agg("small_10m", "count", Sliding(600), where=("amount", "<", 5.0)))
    'count over the sliding 600s window, where amount < 5.0'
    """
    if isinstance(f, Raw):
        return f"the event's {f.field or f.name!r}"
    if isinstance(f, Agg):
        window = f"the {type(f.window).__name__.lower()} {f.window.size:g}s window"
        what = f"{f.agg} of {f.field!r}" if f.field else f.agg
        where = f", where {f.where[0]} {f.where[1]} {f.where[2]!r}" if f.where else ""
        return f"{what} over {window}{where}"
    if isinstance(f, SincePrevious):
        return f"seconds since the entity's previous event (at most {f.cap:g})"
    if isinstance(f, Ewma):
        return f"moving average of {f.field!r} before this event (alpha {f.alpha:g})"
    if isinstance(f, FirstSeen):
        return f"1 when {f.field!r} is new for the entity (of its last {f.memory})"
    if isinstance(f, Derived):
        return f"derived: {model_name(f.fn)}"
    return type(f).__name__


def describe(spec: PipelineSpec, namespace: str = "") -> str:
    """The pipeline as ``driftline validate`` prints it."""
    topics = PipelineTopics.for_spec(spec, namespace)
    declared = {"events": spec.events_topic, "labels": spec.labels_topic}
    lines = [f"{spec.name} ({spec.task})" + (f": {spec.description}" if spec.description
                                             else ""),
             f"  declared in  {PIPELINES.home(spec.name)}",
             f"  events       {spec.event_type.__name__}: keyed by {spec.entity_field!r}, "
             f"event time {spec.time_field!r}, id {spec.event_id_field!r}; late by at most "
             f"{spec.allowed_lateness:g}s",
             f"  labels       {spec.label_type.__name__}.{spec.label_field}: keyed by "
             f"{spec.event_id_field!r}, time {spec.label_time_field!r}; awaited for "
             f"{spec.label_delay_bound:g}s of event time ({spec.labels_partitioner} "
             f"partitioner)",
             "  topics"]
    for kind, name in vars(topics).items():
        note = " (declared)" if declared.get(kind) else ""
        lines.append(f"    {kind:<12} {name}{note}")
    lines.append(f"  features     {len(spec.model_feature_names)}")
    width = max(len(n) for n in spec.model_feature_names)
    for f in spec.features:
        lines.append(f"    {f.name:<{width}}  {feature_line(f)}")
    if spec.embeddings and spec.embeddings.neighbour_feature:
        lines.append(f"    {spec.embeddings.neighbour_feature:<{width}}  label rate among "
                     f"the {spec.embeddings.neighbours} nearest labeled events (Milvus)")
    lines += [f"  model        {model_name(spec.model)}",
              "  candidates   " + (", ".join(model_name(m) for m in spec.candidates)
                                   or "none"),
              f"  metrics      {', '.join(spec.metrics)}",
              f"  drift        {_drift(spec)}",
              f"  retrain      {_retrain(spec)}",
              f"  fallback     {_fallback(spec)}",
              f"  embeddings   {_embeddings(spec)}"]
    return "\n".join(lines)


def _params(pairs: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in pairs)


def _drift(spec: PipelineSpec) -> str:
    d = spec.drift
    concept = d.concept + (f" ({_params(d.concept_params)})" if d.concept_params else "")
    categorical = f"; chi-squared for {', '.join(d.categorical)}" if d.categorical else ""
    return (f"{concept} on the served errors; features: PSI > {d.psi_threshold:g} or "
            f"p < {d.p_value:g}, {d.reference_size} reference rows against the last "
            f"{d.window}, every {d.check_every}{categorical}")


def _retrain(spec: PipelineSpec) -> str:
    r = spec.retrain
    model = model_name(r.model) if r.model is not None else "the pipeline's model"
    return (f"{model}; the last {r.window} examples, the newest {r.holdout} held out, "
            f"{r.min_after_drift} labels after a drift; on {spec.retrain_metric}, by "
            f"{r.margin:g}; cool-down {r.cooldown_seconds:g}s")


def _fallback(spec: PipelineSpec) -> str:
    f = spec.fallback
    if f is None:
        return "none (no degraded answers: 503 when the features or model are not there)"
    model = model_name(f.model) if f.model is not None else "the pipeline's model"
    return (f"{model} on {', '.join(f.features)}; answers {f.prior:g} until it has "
            f"learned {f.min_examples} examples")


def _embeddings(spec: PipelineSpec) -> str:
    e = spec.embeddings
    if e is None:
        return "none"
    d = asdict(e)
    features = ", ".join(e.features) or "every feature"
    neighbour = (f"; neighbour feature {e.neighbour_feature} (k={e.neighbours})"
                 if e.neighbour_feature else "")
    return (f"{features}; {d['metric']} distance, {d['index']} index "
            f"({_params(e.index_params)}); standardizer fit on {e.fit_rows} rows; profiles' "
            f"half-life {e.profile_half_life:g}s{neighbour}")
