
from river.datasets import synth

from online_models.spec import build_model, predict
from streams.catalog.agrawal import AGRAWAL, ATTRIBUTES, CATEGORICAL, LoanApplication
from streams.engine import FeatureEngine
from streams.generators import GENERATORS, generate, generate_history
from streams.generators.agrawal import AgrawalGenerator, AgrawalStreamConfig
from streams.pipelines import PIPELINES


def stream(**kw):
    return list(AgrawalGenerator(AgrawalStreamConfig(**kw)).emissions())


def split(emitted):
    events = [e.record for e in emitted if e.kind == "event"]
    labels = {e.record.event_id: e.record.approved for e in emitted if e.kind == "label"}
    return events, labels


# Agrawal's classification functions 8 and 0, written out (class 1 is "approved").
def function_8(a: LoanApplication) -> bool:
    disposable = 2 * (a.salary + a.commission) / 3 - 5000 * a.elevel - a.loan / 5 - 10000
    return not disposable > 1


def function_0(a: LoanApplication) -> bool:
    return a.age < 40 or a.age >= 60


def agreement(rule, events, labels) -> float:
    return sum(rule(a) == labels[a.event_id] for a in events) / len(events)


def test_decisions_come_after_the_configured_delay_plus_jitter():
    emitted = stream(events=2000, seed=5, label_delay=10.0)
    events = {e.record.event_id: e for e in emitted if e.kind == "event"}
    labels = [e for e in emitted if e.kind == "label"]
    for lbl in labels:
        delay = lbl.at - events[lbl.record.event_id].record.ts
        assert 10.0 - 1e-3 <= delay <= 15.0 + 1e-3
        assert isinstance(lbl.record.approved, bool)  # what predict's .get(True) needs
    assert [e.at for e in emitted] == sorted(e.at for e in emitted)


def test_keys_sources_and_run_id():
    emitted = stream(events=500, seed=1, sources=4, run_id="abc")
    for e in emitted:
        assert e.key == (e.record.source if e.kind == "event" else e.record.event_id)
        assert e.record.event_id.startswith("abc-")
    assert {e.record.source for e in emitted if e.kind == "event"} == {
        f"branch-{i}" for i in range(4)}


def test_rate_sets_event_time():
    events, _ = split(stream(events=1000, seed=2, events_per_second=10.0, start_time=1000.0))
    assert 80.0 < events[-1].ts - 1000.0 < 120.0


def test_attributes_are_rivers_agrawal_stream():
    events, _ = split(stream(events=50, seed=9))
    for a, (x, _) in zip(events, synth.Agrawal(classification_function=8, seed=9).take(50),
                         strict=True):
        assert a.age == x["age"] and a.car == x["car"]
        assert abs(a.salary - x["salary"]) <= 0.005 and abs(a.loan - x["loan"]) <= 0.005


def test_the_concept_switches_at_drift_at():
    config = AgrawalStreamConfig(events=4000, seed=4, drift_at=0.5)
    events, labels = split(list(AgrawalGenerator(config).emissions()))
    before, after = events[:2000], events[2000:]
    # Exactly function 8 before the drift and function 0 after it ...
    assert agreement(function_8, before, labels) == 1.0
    assert agreement(function_0, after, labels) == 1.0
    # ... which disagree on about half the applications: the old rule is a coin flip after.
    assert 0.4 < agreement(function_8, after, labels) < 0.6
    assert 0.4 < agreement(function_0, before, labels) < 0.6
    gen = AgrawalGenerator(config)
    assert (gen.function_of(1999), gen.function_of(2000)) == (8, 0)


def test_no_drift_keeps_the_first_concept():
    events, labels = split(stream(events=1000, seed=6, drift_at=None))
    assert agreement(function_8, events, labels) == 1.0


def test_features_are_the_raw_attributes():
    engine = FeatureEngine(AGRAWAL)
    states = {}
    events, _ = split(stream(events=200, seed=8))
    for a in events:
        states[a.source], features = engine.observe(states.get(a.source), a)
        assert features == {name: float(getattr(a, name)) for name in ATTRIBUTES}
    assert AGRAWAL.feature_names == ATTRIBUTES
    assert set(AGRAWAL.drift.categorical) == set(CATEGORICAL)


def test_declaration_is_registered_with_its_generator():
    assert PIPELINES["agrawal"] is AGRAWAL
    assert AGRAWAL.generator in GENERATORS
    assert AGRAWAL.retrain_metric == "accuracy" and AGRAWAL.task == "binary"
    # What the CLI passes.
    config, emissions = generate("agrawal", events=20, seed=3, run_id="r", label_delay=2.0)
    assert config.label_delay == 2.0 and sum(e.kind == "event" for e in emissions) == 20
    config, _ = generate_history("agrawal", events=100, now=10_000.0)
    assert config.start_time + 100 / config.events_per_second == 10_000.0


def test_the_champion_learns_the_first_concept():
    model = build_model(AGRAWAL.model)
    engine = FeatureEngine(AGRAWAL)
    events, labels = split(stream(events=2000, seed=1, drift_at=None))
    hits = []
    for a in events:
        _, x = engine.observe(None, a)
        hits.append((predict(model, "binary", x) >= 0.5) == labels[a.event_id])
        model.learn_one(x, labels[a.event_id])
    assert sum(hits[-500:]) / 500 > 0.8
