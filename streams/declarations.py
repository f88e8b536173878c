"""The vocabulary of a pipeline declaration: what flows in, what is learned, which features.

A pipeline is declared once, in Python, as a :class:`PipelineSpec`. The stream worker,
the scoring API, the replay that checks training-serving parity and the retrainer
all read the same object; nothing else in Driftline is specific to one pipeline.

Features, computed per entity in event time by :class:`streams.engine.FeatureEngine`:

* :class:`Raw` — an event field as a number;
* :class:`Agg` — ``count``, ``sum``, ``mean``, ``min``, ``max``, ``std`` or ``distinct``
  over a :class:`Sliding` window ``(t - size, t]`` or the current :class:`Tumbling`
  window ``[floor(t / size) * size, t]``, optionally of the events that pass ``where``
  (a ``(field, operator, value)`` test); the current event is included;
* :class:`SincePrevious` — seconds since the entity's previous event (capped);
* :class:`Ewma` — the exponentially weighted average of a field *before* this event;
* :class:`FirstSeen` — 1.0 when a field's value is new for the entity;
* :class:`Derived` — any function of the event's fields and the features declared before.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal

from streams.schemas import Record

AGGREGATIONS = ("count", "sum", "mean", "min", "max", "std", "distinct")
OPERATORS: dict[str, Callable[[object, object], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}


@dataclass(frozen=True)
class Sliding:
    size: float  # seconds


@dataclass(frozen=True)
class Tumbling:
    size: float  # seconds


@dataclass(frozen=True)
class Raw:
    name: str
    field: str | None = None  # the event field; defaults to ``name``


@dataclass(frozen=True)
class Agg:
    name: str
    agg: str
    window: Sliding | Tumbling
    field: str | None = None  # not needed for ``count``
    where: tuple[str, str, float | str] | None = None  # e.g. ("amount", "<", 5.0)

    def __post_init__(self) -> None:
        if self.where is not None and self.where[1] not in OPERATORS:
            raise ValueError(f"{self.name}: unknown operator {self.where[1]!r}; "
                             f"choose from {sorted(OPERATORS)}")
        if self.agg not in AGGREGATIONS:
            raise ValueError(f"{self.name}: unknown aggregation {self.agg!r}; "
                             f"choose from {AGGREGATIONS}")
        if self.agg != "count" and self.field is None:
            raise ValueError(f"{self.name}: {self.agg} needs a field")


@dataclass(frozen=True)
class SincePrevious:
    name: str
    cap: float = 86_400.0  # the value when there is no previous event


@dataclass(frozen=True)
class Ewma:
    name: str
    field: str
    alpha: float  # weight of the newest value

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"{self.name}: alpha must be in (0, 1]")


@dataclass(frozen=True)
class FirstSeen:
    name: str
    field: str
    memory: int = 64  # distinct values remembered per entity (the most recent)


@dataclass(frozen=True)
class Derived:
    name: str
    fn: Callable[[Mapping[str, float]], float]


Feature = Raw | Agg | SincePrevious | Ewma | FirstSeen | Derived

# A model, as a declaration names it: a factory of fresh, untrained River estimators (any
# callable without arguments), or its import path, ``"package.module:function"``.
ModelFactory = Callable[[], Any]
ModelRef = str | ModelFactory


def model_name(model: ModelRef) -> str:
    """The import path of a model factory: what lineage and logs record.

    >>> from river import linear_model
    >>> model_name(linear_model.LogisticRegression)
    'river.linear_model.log_reg:LogisticRegression'
    >>> model_name("myco.models:tree")
    'myco.models:tree'
    """
    if isinstance(model, str):
        return model
    return f"{model.__module__}:{getattr(model, '__qualname__', type(model).__name__)}"


def asdict_shallow(obj: Any) -> dict[str, Any]:
    """A dataclass's fields, values as they are (``asdict`` would copy functions)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


@dataclass(frozen=True)
class DriftPolicy:
    """How a pipeline watches its model: concept drift on the served error stream (0/1
    errors of a classifier, absolute errors of a regression) and feature drift between the
    rows the serving model was trained on and the most recent rows."""

    concept: Literal["adwin", "page_hinkley"] = "adwin"
    concept_params: tuple[tuple[str, float], ...] = ()  # passed to River, e.g. (("delta", 0.002),)
    categorical: tuple[str, ...] = ()     # features compared with chi-squared, not PSI and KS
    reference_size: int = 2000            # rows (labels) in the reference window
    window: int = 2000                    # rows in the sliding live window
    check_every: int = 500                # live rows between two feature comparisons
    psi_threshold: float = 0.25
    p_value: float = 0.001


@dataclass(frozen=True)
class RetrainPolicy:
    """What a drift detection (or a manual request) leads to: a challenger trained from
    scratch on recent training examples, promoted only when it beats the champion."""

    model: ModelRef | None = None  # the challenger's model; default: the pipeline's
    window: int = 3000            # most recent training examples read, the hold-out included
    holdout: int = 1000           # the newest of them, on which both models are compared
    min_after_drift: int = 1500   # labels after the detection before the window is read
    metric: str = ""              # compared on the hold-out; default: the first declared metric
    margin: float = 0.01          # the challenger must be better by this much (absolute)
    cooldown_seconds: float = 120.0  # no retrain for drift this soon after the previous one

    def __post_init__(self) -> None:
        if not 0 < self.holdout < self.window:
            raise ValueError("retrain: holdout must be positive and smaller than window")


@dataclass(frozen=True)
class EmbeddingPolicy:
    """Labeled events and entity profiles as vectors in Milvus: similar-case search, and
    optionally the neighbour feature (the label rate among the ``neighbours`` nearest
    labeled events) as a model input. See :mod:`streams.embeddings` for the vectors."""

    features: tuple[str, ...] = ()        # embedded features; default: every declared one
    metric: Literal["L2", "IP", "COSINE"] = "L2"
    index: str = "HNSW"                   # a Milvus index type: HNSW, IVF_FLAT, FLAT, ...
    index_params: tuple[tuple[str, int], ...] = (("M", 16), ("efConstruction", 200))
    search_params: tuple[tuple[str, int], ...] = (("ef", 64),)
    fit_rows: int = 1000                  # labeled rows the standardizer learns, then frozen
    profile_half_life: float = 86_400.0   # seconds of event time, for entity profiles
    neighbour_feature: str | None = None  # a model feature's name; None: no such feature
    neighbours: int = 20                  # k of the neighbour feature

    def __post_init__(self) -> None:
        if self.fit_rows < 2:
            raise ValueError("embeddings: fit_rows must be at least 2")
        if self.neighbours < 1:
            raise ValueError("embeddings: neighbours must be at least 1")


@dataclass(frozen=True)
class FallbackPolicy:
    """What the scoring API answers with when an entity's features or the model are not
    there in time (Redis down or slow): a small model of the ``features`` an event gives
    on its own, with no entity history (``Raw`` ones, and ``Derived`` ones of them). The
    learner trains it on every labeled example beside the champion and publishes it with
    each snapshot; before the first one, the answer is ``prior`` (the base rate of a
    binary task, a typical value of a regression), and so it is until the model has
    learned ``min_examples`` (a model of a few labels answers near 0.5, or near 0)."""

    features: tuple[str, ...]
    prior: float
    model: ModelRef | None = None  # the fallback's model; default: the pipeline's
    min_examples: int = 500


@dataclass(frozen=True)
class PipelineSpec:
    """Everything Driftline needs to know about one pipeline."""

    name: str
    event_type: type[Record]
    entity_field: str
    time_field: str
    label_type: type[Record]
    label_field: str                      # the target inside a label record
    task: Literal["binary", "regression"]
    features: tuple[Feature, ...]
    model: ModelRef                       # the champion's model factory
    metrics: tuple[str, ...]
    event_id_field: str = "event_id"      # also the join key of labels
    label_time_field: str = "ts"
    label_delay_bound: float = 3600.0     # seconds of event time a snapshot waits
    allowed_lateness: float = 600.0       # behind the entity's newest event
    # Seconds an event's time may be ahead of the wall clock (a timestamp in milliseconds
    # would otherwise become its entity's newest, and every real event after it "late").
    max_future_skew: float = 300.0
    # The largest magnitude a feature may take: an event giving a feature beyond it (or a
    # value that is not finite) is refused before it is scored or learned from.
    feature_limit: float = 1e12
    events_topic: str | None = None       # default: "<name>.events" (namespaced)
    labels_topic: str | None = None       # default: "<name>.labels" (namespaced)
    # How the labels' producer partitions them by event id: "crc32" (librdkafka's default:
    # confluent-kafka, kcat) or "murmur2" (the Java client's, aiokafka's). A snapshot is
    # sent where its label lands, so the label joins it without a hop; a label found
    # elsewhere is forwarded to it (driftline_labels_forwarded_total counts them).
    labels_partitioner: Literal["crc32", "murmur2"] = "crc32"
    generator: str | None = None          # a key of streams.generators.GENERATORS
    description: str = ""
    max_recent: int = 512                 # events kept per entity, whatever the traffic
    drift: DriftPolicy = DriftPolicy()
    retrain: RetrainPolicy = RetrainPolicy()
    embeddings: EmbeddingPolicy | None = None  # None: nothing goes to Milvus
    fallback: FallbackPolicy | None = None     # None: no degraded answers, a 503 instead
    # More models for the retrainer to try: each is trained on the window beside the
    # pipeline's model, and the best on the hold-out challenges the champion.
    candidates: tuple[ModelRef, ...] = ()
    feature_names: tuple[str, ...] = field(init=False)  # computed by the feature engine
    # The attribute of each field the spec reads (its JSON name may be an alias).
    _attrs: dict[Any, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"{self.name}: features declared twice: {sorted(dupes)}")
        # Field names as they appear in the JSON (a pydantic alias, when a field has one:
        # "amount-eur" or "1" are fine names for a producer), and the attribute of each.
        event_attrs, label_attrs = json_fields(self.event_type), json_fields(self.label_type)
        fields = set(event_attrs)
        for f in self.features:
            used = [getattr(f, "field", None) or (f.name if isinstance(f, Raw) else None)]
            if isinstance(f, Agg) and f.where:
                used.append(f.where[0])
            for u in used:
                if u is not None and u not in fields:
                    raise ValueError(f"{self.name}: feature {f.name} reads unknown field {u!r}")
        for needed in (self.entity_field, self.time_field, self.event_id_field):
            if needed not in fields:
                raise ValueError(f"{self.name}: the event has no field {needed!r}")
        for needed in (self.label_field, self.event_id_field, self.label_time_field):
            if needed not in label_attrs:
                raise ValueError(f"{self.name}: the label has no field {needed!r}")
        if self.max_future_skew < 0 or not self.feature_limit > 0:
            raise ValueError(f"{self.name}: max_future_skew must be >= 0 and feature_limit > 0")
        for name in self.drift.categorical:
            if name not in names:
                raise ValueError(f"{self.name}: drift.categorical names unknown feature {name!r}")
        if self.retrain.metric and self.retrain.metric not in self.metrics:
            raise ValueError(f"{self.name}: retrain.metric {self.retrain.metric!r} is not one "
                             f"of the declared metrics {self.metrics}")
        if self.embeddings is not None:
            for name in self.embeddings.features:
                if name not in names:
                    raise ValueError(f"{self.name}: embeddings.features names unknown "
                                     f"feature {name!r}")
            if self.embeddings.neighbour_feature in names:
                raise ValueError(f"{self.name}: the neighbour feature "
                                 f"{self.embeddings.neighbour_feature!r} is declared twice")
        if self.fallback is not None:
            kinds = {f.name: f for f in self.features}
            for name in self.fallback.features:
                if not isinstance(kinds.get(name), Raw | Derived):
                    raise ValueError(f"{self.name}: fallback.features needs Raw or Derived "
                                     f"features of the event alone; {name!r} is not one")
        object.__setattr__(self, "feature_names", tuple(names))
        object.__setattr__(self, "_attrs", {
            "entity": event_attrs[self.entity_field], "time": event_attrs[self.time_field],
            "label": label_attrs[self.label_field],
            "label_time": label_attrs[self.label_time_field],
            self.event_type: event_attrs[self.event_id_field],
            self.label_type: label_attrs[self.event_id_field]})

    @property
    def model_feature_names(self) -> tuple[str, ...]:
        """What the model sees: the engine's features, then the neighbour feature."""
        extra = self.embeddings.neighbour_feature if self.embeddings else None
        return self.feature_names + ((extra,) if extra else ())

    def describe(self) -> dict[str, Any]:
        """The declaration as JSON-ready data: the lineage of every model trained from it.

        >>> from streams.catalog.fraud import FRAUD
        >>> d = FRAUD.describe()
        >>> d["model"], d["retrain"]["holdout"]
        ('streams.catalog.fraud:fraud_logistic', 1000)
        >>> d["features"][0]
        {'kind': 'Raw', 'name': 'amount', 'field': None}
        """
        def feature(f: Feature) -> dict[str, Any]:
            out: dict[str, Any] = {"kind": type(f).__name__}
            for k, v in asdict_shallow(f).items():
                out[k] = getattr(v, "__qualname__", None) or (
                    {"kind": type(v).__name__, **asdict(v)} if is_dataclass(v) else v)
            return out

        return {
            "name": self.name, "task": self.task, "model": model_name(self.model),
            "candidates": [model_name(m) for m in self.candidates],
            "metrics": list(self.metrics), "entity": self.entity_field,
            "event": self.event_type.__name__, "label": self.label_type.__name__,
            "features": [feature(f) for f in self.features],
            "drift": asdict(self.drift), "retrain": _with_model_names(self.retrain),
            "embeddings": asdict(self.embeddings) if self.embeddings else None,
            "fallback": _with_model_names(self.fallback) if self.fallback else None,
        }

    @property
    def retrain_metric(self) -> str:
        """The metric champion and challenger are compared on."""
        return self.retrain.metric or self.metrics[0]

    def entity_of(self, event: Record) -> str:
        return str(getattr(event, self._attrs["entity"]))

    def time_of(self, event: Record) -> float:
        return float(getattr(event, self._attrs["time"]))

    def event_id_of(self, record: Record) -> str:
        """The event id of an event or of a label (the join key)."""
        return str(getattr(record, self._attrs.get(type(record), self.event_id_field)))

    def target_of(self, label: Record) -> bool | float:
        value = getattr(label, self._attrs["label"])
        return bool(value) if self.task == "binary" else float(value)

    def label_time_of(self, label: Record) -> float:
        return float(getattr(label, self._attrs["label_time"]))


def json_fields(record: type[Record]) -> dict[str, str]:
    """Each field's name in the JSON (its alias, if it has one) and its attribute.

    >>> from pydantic import Field
    >>> class Payment(Record):
    ...     amount_eur: float = Field(alias="amount-eur")
    ...     card: str
    >>> json_fields(Payment)
    {'amount-eur': 'amount_eur', 'card': 'card'}
    """
    return {(info.alias or name): name for name, info in record.model_fields.items()}


def _with_model_names(policy: Any) -> dict[str, Any]:
    out = asdict(policy)
    if out.get("model") is not None:
        out["model"] = model_name(out["model"])
    return out


def ratio(numerator: float, denominator: float, floor: float) -> float:
    """``numerator / denominator`` with a denominator smaller than ``floor`` (in magnitude)
    taken as ``floor``: a derived feature safe by construction (a mean of 1e-300 made one
    ordinary payment's ratio 5e301, and the model learned it).

    >>> ratio(50.0, 1e-300, floor=0.01), ratio(50.0, 25.0, floor=0.01)
    (5000.0, 2.0)
    """
    if abs(denominator) < floor:
        denominator = floor if denominator >= 0 else -floor
    return numerator / denominator
