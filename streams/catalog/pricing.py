"""Dynamic ride pricing: what will this ride cost? (regression)

Entity: the pickup zone. Each event is a ride request with the zone's current number of
active drivers; its label is the price finally paid, known when the ride ends. Demand
(requests per window) against supply (active drivers) drives the surge, so the features
are the zone's windowed demand and supply.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from streams.declarations import (
    Agg,
    Derived,
    Ewma,
    PipelineSpec,
    Raw,
    SincePrevious,
    Sliding,
    Tumbling,
)
from streams.schemas import Record

MINUTE, HOUR = 60.0, 3600.0


class RideRequest(Record):
    """A ride requested in a zone (keyed by ``zone_id``)."""

    event_id: str = Field(min_length=1, max_length=128)
    zone_id: str = Field(min_length=1, max_length=64)
    distance_km: float = Field(gt=0, lt=500, allow_inf_nan=False)
    duration_min: float = Field(gt=0, lt=1440, allow_inf_nan=False)
    active_drivers: int = Field(ge=0, lt=1_000_000)
    ts: float = Field(gt=0, allow_inf_nan=False, description="event time, epoch seconds")


class RidePrice(Record):
    """The price paid for a ride (keyed by ``event_id``), known when the ride ends."""

    event_id: str = Field(min_length=1, max_length=128)
    price: float = Field(ge=0, lt=1e6, allow_inf_nan=False)
    ts: float = Field(gt=0, allow_inf_nan=False, description="when the price became known")


def demand_supply(f: Mapping[str, float]) -> float:
    return f["requests_5m"] / max(f["drivers_mean_15m"], 1.0)


def distance_x_pressure(f: Mapping[str, float]) -> float:
    return f["distance_km"] * f["demand_supply"]


PRICING = PipelineSpec(
    name="pricing",
    description="ride prices predicted per request from the zone's demand and supply",
    event_type=RideRequest,
    entity_field="zone_id",
    time_field="ts",
    label_type=RidePrice,
    label_field="price",
    task="regression",
    model="pricing_linear",
    metrics=("mae", "rmse"),
    label_delay_bound=3 * HOUR,
    allowed_lateness=5 * MINUTE,
    generator="pricing",
    features=(
        Raw("distance_km"),
        Raw("duration_min"),
        Raw("active_drivers"),
        Agg("requests_5m", "count", Sliding(5 * MINUTE)),
        Agg("requests_15m", "count", Sliding(15 * MINUTE)),
        Agg("requests_this_10m", "count", Tumbling(10 * MINUTE)),
        Agg("drivers_mean_15m", "mean", Sliding(15 * MINUTE), field="active_drivers"),
        Agg("drivers_min_15m", "min", Sliding(15 * MINUTE), field="active_drivers"),
        Agg("distance_std_1h", "std", Sliding(HOUR), field="distance_km"),
        SincePrevious("seconds_since_prev", cap=HOUR),
        Ewma("distance_ewm", "distance_km", alpha=0.1),
        Derived("demand_supply", demand_supply),
        Derived("distance_x_pressure", distance_x_pressure),
    ),
)
