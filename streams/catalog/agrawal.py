"""Loan applications from River's Agrawal stream: will this loan be approved? (binary)

The proof on a known stream: ``river.datasets.synth.Agrawal`` replayed through Kafka with
delayed labels and an abrupt concept drift half-way (the generator ``agrawal``). Before it,
approval follows Agrawal's function 8 (disposable income: salary and commission against the
education level and the loan); after it, function 0 (an age band). A Hoeffding tree that
learned the first rule keeps its income splits and recovers slowly; a tree trained from
scratch on the labels after the drift learns the age band from about a thousand of them.

Entity: the branch that received the application (a handful; the class does not depend on
it). The features are Agrawal's nine attributes as they are; three are categorical codes.

>>> from streams.engine import FeatureEngine
>>> app = LoanApplication(event_id="e1", source="branch-0", salary=52_000.0, commission=0.0,
...                       age=31, elevel=2, car=7, zipcode=4, hvalue=310_000.0, hyears=12,
...                       loan=120_000.0, ts=1.0)
>>> _, features = FeatureEngine(AGRAWAL).observe(None, app)
>>> features["age"], features["elevel"], len(features)
(31.0, 2.0, 9)
"""

from __future__ import annotations

from pydantic import Field
from river import base, tree

from streams.declarations import DriftPolicy, FallbackPolicy, PipelineSpec, Raw, RetrainPolicy
from streams.schemas import Record

# Agrawal's attributes, in River's order; the last three are category codes.
NUMERIC = ("salary", "commission", "age", "hvalue", "hyears", "loan")
CATEGORICAL = ("elevel", "car", "zipcode")
ATTRIBUTES = ("salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears",
              "loan")


class LoanApplication(Record):
    """One application with Agrawal's attributes (keyed by ``source``)."""

    event_id: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=64)
    salary: float = Field(ge=0, lt=1e7, allow_inf_nan=False)
    commission: float = Field(ge=0, lt=1e7, allow_inf_nan=False)
    age: int = Field(ge=0, lt=150)
    elevel: int = Field(ge=0, le=4, description="education level, a category code")
    car: int = Field(ge=1, le=20, description="car maker, a category code")
    zipcode: int = Field(ge=0, le=8, description="town, a category code")
    hvalue: float = Field(ge=0, lt=1e8, allow_inf_nan=False, description="house value")
    hyears: int = Field(ge=0, lt=100, description="years the house has been owned")
    loan: float = Field(ge=0, lt=1e8, allow_inf_nan=False)
    ts: float = Field(gt=0, allow_inf_nan=False, description="event time, epoch seconds")


class LoanOutcome(Record):
    """The decision on an application (keyed by ``event_id``): Agrawal's class 1."""

    event_id: str = Field(min_length=1, max_length=128)
    approved: bool
    ts: float = Field(gt=0, allow_inf_nan=False, description="when the decision became known")


def agrawal_tree() -> base.Classifier:
    """The drift proof's champion and challenger: a Hoeffding tree."""
    # A plain Hoeffding tree never revises a split: after a drift it recovers only as its
    # leaves fill with new labels, which is what a retrain from scratch is there to fix.
    # A short grace period lets a fresh tree split after tens of labels, not hundreds.
    return tree.HoeffdingTreeClassifier(grace_period=50)


AGRAWAL = PipelineSpec(
    name="agrawal",
    description="River's Agrawal loan stream with an abrupt concept drift: detected, retrained",
    event_type=LoanApplication,
    entity_field="source",
    time_field="ts",
    label_type=LoanOutcome,
    label_field="approved",
    task="binary",
    model=agrawal_tree,
    # Accuracy first: it is the metric of the proof and the one retrains are decided on.
    metrics=("accuracy", "roc_auc", "log_loss"),
    label_delay_bound=300.0,   # labels come 10-15 s of event time after their application
    allowed_lateness=30.0,
    # Raw features need no history: the state only remembers recent ids (duplicates).
    max_recent=128,
    generator="agrawal",
    features=tuple(Raw(name) for name in ATTRIBUTES),
    # ADWIN with River's default delta (0.002) flags the switch 40-160 labels after it.
    drift=DriftPolicy(categorical=CATEGORICAL),
    # Read once 1,500 labels followed the detection, the window holds only the new concept:
    # a fresh tree learns the age band from its first 1,000 (0.92-1.00 on the newest 500,
    # where the champion scores 0.50-0.65).
    retrain=RetrainPolicy(window=1500, holdout=500, min_after_drift=1500, margin=0.05,
                          cooldown_seconds=60.0),
    # Every feature is the event's own, so the fallback is a second tree on all of them.
    fallback=FallbackPolicy(features=ATTRIBUTES, prior=0.5),
)
