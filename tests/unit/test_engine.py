import json
import math
import statistics

import pytest
from pydantic import Field

from streams.catalog.fraud import FRAUD, Transaction
from streams.declarations import (
    Agg,
    Derived,
    Ewma,
    FirstSeen,
    PipelineSpec,
    Raw,
    SincePrevious,
    Sliding,
    Tumbling,
)
from streams.engine import DuplicateEvent, FeatureEngine, LateEvent
from streams.schemas import Record


class Reading(Record):
    event_id: str
    sensor: str
    value: float
    kind: str = "a"
    ts: float = Field(gt=0)


class Outcome(Record):
    event_id: str
    y: float
    ts: float


def spec(*features, lateness=60.0, max_recent=512):
    return PipelineSpec(name="t", event_type=Reading, entity_field="sensor", time_field="ts",
                        label_type=Outcome, label_field="y", task="regression",
                        features=features, model="pricing_linear", metrics=("mae",),
                        allowed_lateness=lateness, max_recent=max_recent)


def reading(i, ts, value=1.0, kind="a"):
    return Reading(event_id=f"e{i}", sensor="s", value=value, kind=kind, ts=ts)


def run(engine, events):
    state, out = None, []
    for e in events:
        state, f = engine.observe(state, e)
        out.append(f)
    return state, out


def test_every_aggregation_over_a_sliding_window():
    aggs = [Agg(f"{a}_v", a, Sliding(100), field="value") for a in
            ("count", "sum", "mean", "min", "max", "std")]
    engine = FeatureEngine(spec(*aggs, Agg("kinds", "distinct", Sliding(100), field="kind")))
    values = [3.0, 1.0, 4.0, 1.5]
    events = [reading(i, 1000 + 10 * i, v, kind="ab"[i % 2]) for i, v in enumerate(values)]
    _, feats = run(engine, [reading(9, 850, 100.0)] + events)  # 850 is out of every window
    last = feats[-1]
    assert last["count_v"] == 4.0
    assert last["sum_v"] == sum(values)
    assert last["mean_v"] == statistics.fmean(values)
    assert (last["min_v"], last["max_v"]) == (1.0, 4.0)
    assert last["std_v"] == pytest.approx(statistics.pstdev(values))
    assert last["kinds"] == 2.0


def test_sliding_window_excludes_the_event_exactly_one_width_ago():
    engine = FeatureEngine(spec(Agg("n", "count", Sliding(60))))
    _, feats = run(engine, [reading(0, 1000.0), reading(1, 1060.0), reading(2, 1061.0)])
    assert [f["n"] for f in feats] == [1.0, 1.0, 2.0]


def test_tumbling_window_restarts_at_each_boundary():
    engine = FeatureEngine(spec(Agg("n", "count", Tumbling(600))))
    times = [1200.0, 1500.0, 1799.0, 1800.0, 1900.0]
    _, feats = run(engine, [reading(i, t) for i, t in enumerate(times)])
    assert [f["n"] for f in feats] == [1.0, 2.0, 3.0, 1.0, 2.0]


def test_where_counts_only_matching_events():
    engine = FeatureEngine(spec(Agg("small", "count", Sliding(600), where=("value", "<", 5.0))))
    _, feats = run(engine, [reading(0, 100.0, 1.0), reading(1, 110.0, 50.0),
                            reading(2, 120.0, 2.0)])
    assert [f["small"] for f in feats] == [1.0, 1.0, 2.0]


def test_since_previous_ewma_first_seen_and_derived():
    engine = FeatureEngine(spec(
        Raw("value"), SincePrevious("gap", cap=999.0), Ewma("ewm", "value", alpha=0.5),
        FirstSeen("new_kind", "kind", memory=2),
        Derived("ratio", lambda f: f["value"] / f["ewm"])))
    events = [reading(0, 100.0, 2.0, "a"), reading(1, 130.0, 4.0, "b"),
              reading(2, 140.0, 6.0, "a"), reading(3, 150.0, 1.0, "c"),
              reading(4, 160.0, 1.0, "a"), reading(5, 170.0, 1.0, "b")]
    _, feats = run(engine, events)
    assert [f["gap"] for f in feats] == [999.0, 30.0, 10.0, 10.0, 10.0, 10.0]
    assert [f["ewm"] for f in feats][:3] == [2.0, 2.0, 3.0]  # before each event
    assert feats[2]["ratio"] == 2.0
    # memory=2: after "c", the remembered kinds are "a" (t=140) and "c"; "b" was forgotten.
    assert [f["new_kind"] for f in feats] == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_out_of_order_event_within_lateness_sees_only_its_past():
    engine = FeatureEngine(spec(Agg("n", "count", Sliding(60)), SincePrevious("gap"),
                                lateness=120))
    state, _ = run(engine, [reading(0, 1000.0), reading(1, 1100.0)])
    state, late = engine.observe(state, reading(2, 1050.0))
    assert late == {"n": 2.0, "gap": 50.0}  # 1000 and itself; 1100 is in its future
    _, after = engine.observe(state, reading(3, 1101.0))
    assert after == {"n": 3.0, "gap": 1.0}  # 1050, 1100, 1101


def test_event_beyond_the_allowed_lateness_is_rejected_with_the_field():
    engine = FeatureEngine(spec(Raw("value"), lateness=60))
    state, _ = run(engine, [reading(0, 1000.0)])
    with pytest.raises(LateEvent) as err:
        engine.observe(state, reading(1, 939.0))
    assert err.value.field == "ts"
    assert "61.000s behind" in str(err.value)
    engine.observe(state, reading(2, 940.0))  # exactly at the bound: accepted


def test_duplicate_event_is_rejected_and_features_for_ignores_it():
    engine = FeatureEngine(spec(Agg("n", "count", Sliding(60))))
    state, _ = run(engine, [reading(0, 1000.0), reading(1, 1010.0)])
    with pytest.raises(DuplicateEvent):
        engine.observe(state, reading(1, 1010.0))
    assert engine.features_for(state, reading(1, 1010.0)) == {"n": 2.0}


def test_state_is_bounded_and_survives_json_unchanged():
    engine = FeatureEngine(spec(Agg("n", "count", Sliding(1e6)), Ewma("e", "value", 0.1),
                                max_recent=50))
    state, _ = run(engine, [reading(i, 1000.0 + i, value=math.pi * i) for i in range(80)])
    assert len(state["recent"]) == 50
    again = json.loads(json.dumps(state))
    probe = reading(999, 2000.0, 1.25)
    assert engine.observe(again, probe) == engine.observe(state, probe)


def test_observe_does_not_mutate_its_input():
    engine = FeatureEngine(FRAUD)
    state, _ = engine.observe(None, Transaction(event_id="a", card_id="c", merchant_id="m",
                                                amount=1.0, ts=10.0))
    before = json.dumps(state, sort_keys=True)
    engine.observe(state, Transaction(event_id="b", card_id="c", merchant_id="n", amount=2.0,
                                      ts=11.0))
    assert json.dumps(state, sort_keys=True) == before


@pytest.mark.parametrize("features, message", [
    ((Raw("nope"),), "unknown field 'nope'"),
    ((Raw("value"), Raw("value")), "declared twice"),
    ((Agg("x", "count", Sliding(1), where=("nope", "<", 1)),), "unknown field 'nope'"),
])
def test_declaration_errors_name_the_problem(features, message):
    with pytest.raises(ValueError, match=message):
        spec(*features)


def test_unknown_aggregation_or_operator_is_refused():
    with pytest.raises(ValueError, match="unknown aggregation"):
        Agg("x", "median", Sliding(1), field="value")
    with pytest.raises(ValueError, match="unknown operator"):
        Agg("x", "count", Sliding(1), where=("value", "~", 1))


def test_a_fallback_may_use_only_features_of_the_event_alone():
    from dataclasses import replace

    from streams.declarations import FallbackPolicy

    with pytest.raises(ValueError, match="fallback.features needs Raw or Derived.*'count_1m'"):
        replace(FRAUD, fallback=FallbackPolicy(features=("amount", "count_1m"), prior=0.03))
    with pytest.raises(ValueError, match="'nope' is not one"):
        replace(FRAUD, fallback=FallbackPolicy(features=("nope",), prior=0.03))
