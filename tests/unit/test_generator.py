import statistics
from collections import Counter
from itertools import islice

import pytest
from river import datasets

from streams.generators import GENERATORS, generate
from streams.generators.fraud import FraudGenerator, FraudStreamConfig
from streams.generators.pricing import PricingGenerator, PricingStreamConfig
from streams.generators.river_datasets import RiverDatasetConfig, RiverDatasetGenerator


def stream(**kw):
    return list(FraudGenerator(FraudStreamConfig(**kw)).emissions())


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_every_generator_is_deterministic_and_labels_each_event_once_later(name):
    def emitted(seed: int) -> list:
        return list(generate(name, events=400, seed=seed)[1])

    first = emitted(3)
    assert first == emitted(3) and first != emitted(4)
    events = {e.record.event_id: e for e in first if e.kind == "event"}
    labels = [e for e in first if e.kind == "label"]
    assert len(events) == 400
    assert Counter(lbl.record.event_id for lbl in labels) == Counter({k: 1 for k in events})
    assert all(lbl.at > events[lbl.record.event_id].at for lbl in labels)


def test_fraud_labels_come_after_the_configured_delay_plus_jitter():
    emitted = stream(events=3000, seed=5, label_delay=600.0)
    events = {e.record.event_id: e for e in emitted if e.kind == "event"}
    labels = [e for e in emitted if e.kind == "label"]
    for lbl in labels:
        delay = lbl.at - events[lbl.record.event_id].record.ts
        assert 600.0 <= delay <= 900.0 + 1e-6


def test_events_are_keyed_by_card_and_labels_by_event_id():
    for e in stream(events=200, seed=1):
        assert e.key == (e.record.card_id if e.kind == "event" else e.record.event_id)


def test_fraud_patterns_are_present_and_rare():
    emitted = stream(events=20_000, seed=2)
    events = {e.record.event_id: e.record for e in emitted if e.kind == "event"}
    fraud = [events[e.record.event_id] for e in emitted if e.kind == "label" and e.record.is_fraud]
    rate = len(fraud) / len(events)
    assert 0.01 < rate < 0.06
    small = [t for t in fraud if t.amount <= 4.0]
    large = [t for t in fraud if t.amount > 4.0]
    assert small and large  # card testing and account takeover both occur
    # Card testing comes in bursts: several small fraudulent charges on one card.
    per_card = Counter(t.card_id for t in small)
    assert max(per_card.values()) >= 6


def test_rate_sets_event_time_and_the_stream_does_not_trail_on():
    emitted = stream(events=4000, seed=9, events_per_second=200.0, start_time=1000.0)
    times = [e.record.ts - 1000.0 for e in emitted if e.kind == "event"]
    assert 17.0 < max(times) <= 20.0  # no burst outlasts the stream


def test_event_ids_carry_the_run_id():
    emitted = stream(events=10, run_id="abc")
    assert all(e.record.event_id.startswith("abc-") for e in emitted)


def test_pricing_stream_follows_demand_and_drifts():
    config = PricingStreamConfig(events=6000, seed=4)
    gen = PricingGenerator(config)
    emitted = list(gen.emissions())
    events = {e.record.event_id: e.record for e in emitted if e.kind == "event"}
    prices = {e.record.event_id: e.record.price for e in emitted if e.kind == "label"}
    assert set(prices) == set(events)
    for e in emitted:
        if e.kind == "label":
            assert e.at > events[e.record.event_id].ts  # the price is known after the ride
    assert gen.regime(0) != gen.regime(5999)  # the market changes half-way

    def per_km(ids):
        return statistics.fmean(prices[i] / events[i].distance_km for i in ids)

    ids = sorted(events)
    assert per_km(ids[3500:]) > 1.2 * per_km(ids[:2500])


def test_a_river_data_set_is_replayed_in_its_order_with_exact_label_delays():
    config = RiverDatasetConfig(dataset="bananas", events=300, seed=2, label_delay=1.5)
    emitted = list(RiverDatasetGenerator(config).emissions())
    events = [e for e in emitted if e.kind == "event"]
    labels = {e.record.event_id: e for e in emitted if e.kind == "label"}
    for e, (x, y) in zip(events, islice(datasets.Bananas(), 300), strict=True):
        assert (e.record.x, e.record.y) == (x["1"], x["2"]) and e.key == e.record.source
        label = labels[e.record.event_id]
        assert label.record.positive == y and abs(label.at - e.at - 1.5) < 1e-6
    # Asked for more than the data set has, the generator gives the data set.
    assert sum(e.kind == "event" for e in generate("phishing", events=5000)[1]) == 1250
