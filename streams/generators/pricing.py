"""A synthetic ride-request stream whose prices follow demand and supply, with a drift.

Zones have their own demand (following a two-hour cycle of event time) and a fleet of
drivers that wanders. A ride's price is a base fare plus per-kilometre and per-minute
rates, times a surge that grows with the zone's requests in the last five minutes per
active driver. After ``drift_at`` of the stream the market changes (a concept drift): the
per-kilometre rate rises by 40% and surges react twice as strongly.

>>> stream = list(PricingGenerator(PricingStreamConfig(events=40, seed=1)).emissions())
>>> sum(e.kind == "event" for e in stream), sum(e.kind == "label" for e in stream)
(40, 40)
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from streams.catalog.pricing import RidePrice, RideRequest
from streams.generators.base import Emission, EmissionQueue

CYCLE = 2 * 3600.0  # seconds of event time


@dataclass(frozen=True)
class PricingStreamConfig:
    events: int = 10_000
    events_per_second: float = 2.0   # of event time, all zones together
    zones: int = 20
    drift_at: float | None = 0.5     # fraction of the stream; None: no drift
    label_delay: float = 120.0       # after the ride ends (its duration), plus jitter
    start_time: float = 1_767_225_600.0
    seed: int = 7
    run_id: str = "run"


@dataclass
class _Zone:
    zone_id: str
    weight: float
    phase: float
    drivers: float
    recent: deque


class PricingGenerator:
    def __init__(self, config: PricingStreamConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        r = self.rng
        self.zones = [_Zone(f"zone-{i:02d}", math.exp(r.gauss(0, 0.5)), r.uniform(0, 2 * math.pi),
                            r.uniform(8, 40), deque()) for i in range(config.zones)]
        self._queue = EmissionQueue()

    def regime(self, i: int) -> tuple[float, float]:
        """(per-km rate, surge sensitivity) in force for the i-th request."""
        drift_at = self.config.drift_at
        drifted = drift_at is not None and i >= drift_at * self.config.events
        return (1.7, 1.0) if drifted else (1.2, 0.5)

    def emissions(self) -> Iterator[Emission]:
        r = self.rng
        now = self.config.start_time
        for i in range(self.config.events):
            now += r.expovariate(self.config.events_per_second)
            yield from self._queue.until(now)
            weights = [z.weight * (1 + 0.8 * math.sin(2 * math.pi * now / CYCLE + z.phase))
                       for z in self.zones]
            zone = r.choices(self.zones, weights)[0]
            for z in self.zones:  # fleets wander
                z.drivers = min(80.0, max(2.0, z.drivers + r.gauss(0, 0.05)))
            while zone.recent and zone.recent[0] <= now - 300:
                zone.recent.popleft()
            zone.recent.append(now)
            drivers = max(0, round(zone.drivers + r.gauss(0, 2)))
            km = round(math.exp(r.gauss(1.4, 0.5)), 2)
            minutes = round(km * r.uniform(2.0, 3.5) + r.uniform(2, 6), 1)
            per_km, sensitivity = self.regime(i)
            pressure = len(zone.recent) / max(drivers, 1)
            surge = min(3.0, max(1.0, 1 + sensitivity * (pressure - 0.5)))
            price = (2.5 + per_km * km + 0.3 * minutes) * surge * (1 + r.gauss(0, 0.05))
            event_id = f"{self.config.run_id}-{i:07d}"
            self._queue.push(now, "event", zone.zone_id, RideRequest(
                event_id=event_id, zone_id=zone.zone_id, distance_km=km, duration_min=minutes,
                active_drivers=drivers, ts=round(now, 3)))
            label_at = now + minutes * 60 + self.config.label_delay * (0.5 + r.random())
            self._queue.push(label_at, "label", event_id, RidePrice(
                event_id=event_id, price=round(max(price, 0.0), 2), ts=round(label_at, 3)))
        yield from self._queue.drain()
