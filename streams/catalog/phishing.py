"""Web pages from River's Phishing data set: is this page a phishing site? (binary)

A real data set bundled with River (``river.datasets.Phishing``: 1,250 pages of the UCI
"Website Phishing" set, 44% phishing), replayed in its own order through Kafka with delayed
labels (the generator ``phishing``). It has no entity: pages come from a handful of
sources, on which the class does not depend. The nine features are the data set's own,
coded 0, 0.5 and 1 (two of them 0 and 1), so feature drift compares them as categories.

>>> from streams.engine import FeatureEngine
>>> page = WebPage(event_id="e1", source="source-0", ts=1.0, **dict.fromkeys(ATTRIBUTES, 0.5))
>>> _, features = FeatureEngine(PHISHING).observe(None, page)
>>> features["https"], len(features)
(0.5, 9)
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from river import base, compose, linear_model, preprocessing

from streams.declarations import DriftPolicy, FallbackPolicy, PipelineSpec, Raw, RetrainPolicy
from streams.schemas import Record

# The data set's features, in River's order.
ATTRIBUTES = ("empty_server_form_handler", "popup_window", "https", "request_from_other_domain",
              "anchor_from_other_domain", "is_popular", "long_url", "age_of_domain",
              "ip_in_url")


def _code(description: str) -> Any:
    """A feature coded 0, 0.5 or 1 (0 or 1 for some)."""
    return Field(ge=0, le=1, allow_inf_nan=False, description=description)


class WebPage(Record):
    """One page with the data set's features (keyed by ``source``)."""

    event_id: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=64)
    empty_server_form_handler: float = _code("the server form handler (SFH)")
    popup_window: float = _code("pop-up windows")
    https: float = _code("the SSL state")
    request_from_other_domain: float = _code("objects requested from other domains")
    anchor_from_other_domain: float = _code("anchors to other domains")
    is_popular: float = _code("the site's web traffic")
    long_url: float = _code("the URL's length")
    age_of_domain: float = _code("the domain's age")
    ip_in_url: float = _code("an IP address in the URL")
    ts: float = Field(gt=0, allow_inf_nan=False, description="event time, epoch seconds")


class PhishingVerdict(Record):
    """Whether the page was a phishing site (keyed by ``event_id``)."""

    event_id: str = Field(min_length=1, max_length=128)
    is_phishing: bool
    ts: float = Field(gt=0, allow_inf_nan=False, description="when the verdict became known")


def phishing_logistic() -> base.Classifier:
    """The model of River's own LogisticRegression example on this data set (0.88
    prequential accuracy with labels 20 events late)."""
    return compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())


PHISHING = PipelineSpec(
    name="phishing",
    description="River's Phishing data set: web pages, phishing or not",
    event_type=WebPage,
    entity_field="source",
    time_field="ts",
    label_type=PhishingVerdict,
    label_field="is_phishing",
    task="binary",
    model=phishing_logistic,
    metrics=("accuracy", "roc_auc", "log_loss"),
    label_delay_bound=300.0,
    allowed_lateness=30.0,
    # Raw features need no history: the state only remembers recent ids (duplicates).
    max_recent=128,
    generator="phishing",
    features=tuple(Raw(name) for name in ATTRIBUTES),
    drift=DriftPolicy(categorical=ATTRIBUTES),
    # The data set is short: a retrain reads half of it.
    retrain=RetrainPolicy(window=600, holdout=200, min_after_drift=300, margin=0.02),
    # Every feature is the page's own, so the fallback is a second model on all of them.
    fallback=FallbackPolicy(features=ATTRIBUTES, prior=0.44),
)
