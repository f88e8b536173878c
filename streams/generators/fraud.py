"""A synthetic but realistic card-transaction stream with delayed fraud labels.

Cards have a few home merchants and a typical amount (log-normal across cards); they buy
at Poisson times. Two fraud patterns are injected:

* **card testing**: a stolen card number is tried with a burst of small amounts at many
  merchants within a minute or two;
* **account takeover**: one purchase of many times the card's usual amount at a merchant
  the card never used.

Honest noise makes it non-trivial: legitimate large purchases at new merchants, and
legitimate small purchases. Every transaction gets a label, emitted ``label_delay``
seconds of event time after it (with jitter), so the stream interleaves events and
labels in emission order. The generator is pure and seeded: the same config gives the
same stream.

>>> stream = list(FraudGenerator(FraudStreamConfig(events=50, seed=1)).emissions())
>>> sum(e.kind == "event" for e in stream), sum(e.kind == "label" for e in stream)
(50, 50)
>>> all(a.at <= b.at for a, b in zip(stream, stream[1:]))
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from streams.catalog.fraud import FraudLabel, Transaction
from streams.generators.base import Emission, EmissionQueue

MAX_BURST_SECONDS = 90.0


@dataclass(frozen=True)
class FraudStreamConfig:
    events: int = 10_000
    # Of event time: 1,000 cards at 2 events/s each buy every ~8 minutes. The producer
    # replays it faster than real time (see driftline.tools.synthetic).
    events_per_second: float = 2.0
    cards: int = 1_000
    merchants: int = 500
    card_testing_rate: float = 0.002   # bursts started per transaction
    takeover_rate: float = 0.006       # takeovers per transaction
    label_delay: float = 600.0         # seconds of event time, plus up to 50% jitter
    start_time: float = 1_767_225_600.0
    seed: int = 7
    run_id: str = "run"                # makes event ids unique across runs
    card_prefix: str = "card"          # a run of its own cards: f"card-{run_id}"


@dataclass
class _Card:
    card_id: str
    home: list[str]
    typical: float


class FraudGenerator:
    def __init__(self, config: FraudStreamConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.cards = [self._new_card(i) for i in range(config.cards)]
        self._made = 0
        self._queue = EmissionQueue()
        self._ends = config.start_time + config.events / config.events_per_second

    def _new_card(self, i: int) -> _Card:
        r = self.rng
        home = [f"m{r.randrange(self.config.merchants):04d}" for _ in range(r.randint(3, 10))]
        return _Card(f"{self.config.card_prefix}-{i:05d}", home,
                     typical=math.exp(r.gauss(3.3, 0.6)))

    def emissions(self) -> Iterator[Emission]:
        """Events and labels, merged in emission order."""
        r = self.rng
        now = self.config.start_time
        while self._made < self.config.events:
            now += r.expovariate(self.config.events_per_second)
            # Everything scheduled before `now` (burst events, labels) goes out first.
            yield from self._queue.until(now)
            self._normal_or_fraud(now)
        yield from self._queue.drain()

    def _normal_or_fraud(self, now: float) -> None:
        r = self.rng
        u = r.random()
        if u < self.config.card_testing_rate:
            # A burst starts only if it can run its course before the stream ends: a cut
            # burst leaves only its first, hardest-to-tell charges in the last labels.
            if now + MAX_BURST_SECONDS <= self._ends:
                self._card_testing(now)
            else:
                self._normal(now)
        elif (self.config.card_testing_rate <= u
              < self.config.card_testing_rate + self.config.takeover_rate):
            card = r.choice(self.cards)
            amount = card.typical * r.uniform(6, 25)
            self._transaction(now, card, self._stranger(card), amount, fraud=True)
        else:
            self._normal(now)

    def _normal(self, now: float) -> None:
        r = self.rng
        card = r.choice(self.cards)
        roll = r.random()
        if roll < 0.01:    # a legitimate big purchase somewhere new
            merchant, amount = self._stranger(card), card.typical * r.uniform(3, 10)
        elif roll < 0.03:  # a legitimate coffee
            merchant, amount = r.choice(card.home), r.uniform(1.0, 5.0)
        else:
            merchant = r.choice(card.home) if r.random() < 0.9 else self._stranger(card)
            amount = card.typical * math.exp(r.gauss(0, 0.35))
        self._transaction(now, card, merchant, amount, fraud=False)

    def _card_testing(self, now: float) -> None:
        r = self.rng
        card = r.choice(self.cards)
        size = r.randint(6, 15)
        span = r.uniform(20, MAX_BURST_SECONDS)
        for ts in sorted(now + r.uniform(0, span) for _ in range(size)):
            self._transaction(ts, card, self._stranger(card), round(r.uniform(0.5, 4.0), 2),
                              fraud=True)

    def _stranger(self, card: _Card) -> str:
        while True:
            m = f"m{self.rng.randrange(self.config.merchants):04d}"
            if m not in card.home:
                return m

    def _transaction(self, ts: float, card: _Card, merchant: str, amount: float,
                     fraud: bool) -> None:
        if self._made >= self.config.events:
            return
        event_id = f"{self.config.run_id}-{self._made:07d}"
        self._made += 1
        txn = Transaction(event_id=event_id, card_id=card.card_id, merchant_id=merchant,
                          amount=round(max(amount, 0.01), 2), ts=round(ts, 3))
        self._queue.push(ts, "event", card.card_id, txn)
        label_at = ts + self.config.label_delay * (1 + 0.5 * self.rng.random())
        self._queue.push(label_at, "label", event_id,
                         FraudLabel(event_id=event_id, is_fraud=fraud, ts=round(label_at, 3)))


@dataclass(frozen=True)
class ProbeCase:
    """A card's history and one more transaction to score after it."""

    history: list[Transaction]
    probe: Transaction


def probe_cases(now: float, run_id: str) -> dict[str, ProbeCase]:
    """Two hand-made cases for showing and testing the scores: a card-testing burst in
    progress, and a card buying as it always does.

    >>> cases = probe_cases(1_000_000.0, "x")
    >>> len(cases["card_testing"].history), cases["normal"].probe.amount
    (14, 42.0)
    """
    burst_card, normal_card = f"probe-burst-{run_id}", f"probe-normal-{run_id}"

    def usual(card: str, tag: str) -> list[Transaction]:
        # Three days of ordinary purchases at the card's usual merchant.
        return [Transaction(event_id=f"{run_id}-{tag}-usual-{i}", card_id=card,
                            merchant_id="m0042", amount=38.0 + 2 * i,
                            ts=now - 3 * 86_400 + i * 43_200) for i in range(6)]

    burst = [Transaction(event_id=f"{run_id}-burst-{i}", card_id=burst_card,
                         merchant_id=f"m{900 + i:04d}", amount=1.0 + 0.25 * i,
                         ts=now - 50 + 6 * i) for i in range(8)]
    return {
        "card_testing": ProbeCase(usual(burst_card, "burst") + burst, Transaction(
            event_id=f"{run_id}-burst-probe", card_id=burst_card, merchant_id="m0999",
            amount=1.5, ts=now)),
        "normal": ProbeCase(usual(normal_card, "normal"), Transaction(
            event_id=f"{run_id}-normal-probe", card_id=normal_card, merchant_id="m0042",
            amount=42.0, ts=now)),
    }
