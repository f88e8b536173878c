import json

import pytest

from streams.features import FEATURE_NAMES, HORIZON, MAX_RECENT, NO_PREVIOUS, observe
from streams.schemas import Transaction


def txn(ts, amount=10.0, merchant="m1", card="c1", i=0):
    return Transaction(event_id=f"e{i}-{ts}", card_id=card, merchant_id=merchant,
                       amount=amount, ts=ts)


def run(events):
    state, feats = None, []
    for e in events:
        state, f = observe(state, e)
        feats.append(f)
    return state, feats


def test_first_event_has_no_history():
    _, f = observe(None, txn(1000.0, amount=25.0))
    assert set(f) == set(FEATURE_NAMES)
    assert f["count_1m"] == f["count_1h"] == 1.0
    assert f["sum_10m"] == 25.0
    assert f["seconds_since_prev"] == NO_PREVIOUS
    assert f["new_merchant"] == 1.0
    assert f["amount_to_mean"] == 1.0


def test_sliding_windows_count_only_events_inside_them():
    events = [txn(1000.0, 1.0), txn(1030.0, 2.0), txn(1500.0, 4.0), txn(1545.0, 8.0)]
    _, feats = run(events)
    last = feats[-1]
    assert (last["count_1m"], last["sum_1m"]) == (2.0, 12.0)      # 1500, 1545
    assert (last["count_10m"], last["sum_10m"]) == (4.0, 15.0)    # 1000 is 545s earlier
    assert last["seconds_since_prev"] == 45.0


def test_window_edge_is_exclusive_of_events_exactly_one_width_ago():
    _, feats = run([txn(1000.0, 1.0), txn(1060.0, 2.0)])
    assert feats[-1]["count_1m"] == 1.0
    assert feats[-1]["count_10m"] == 2.0


def test_new_merchant_and_distinct_merchants():
    _, feats = run([txn(1.0, merchant="a"), txn(2.0, merchant="b"), txn(3.0, merchant="a")])
    assert [f["new_merchant"] for f in feats] == [1.0, 1.0, 0.0]
    assert feats[-1]["distinct_merchants_10m"] == 2.0


def test_amount_to_mean_compares_with_the_cards_typical_amount():
    _, feats = run([txn(1.0, 20.0), txn(2.0, 20.0), txn(3.0, 200.0)])
    assert feats[-1]["amount_to_mean"] == pytest.approx(10.0)


def test_out_of_order_event_is_placed_at_its_event_time():
    state, _ = run([txn(1000.0, 1.0), txn(1100.0, 2.0)])
    state, late = observe(state, txn(1050.0, 4.0))
    # At t=1050 only the event at 1000 came before it; the one at 1100 is in its future.
    assert late["count_1m"] == 2.0
    assert late["seconds_since_prev"] == 50.0
    assert [r[0] for r in state["recent"]] == [1000.0, 1050.0, 1100.0]


def test_state_is_bounded_and_forgets_beyond_the_horizon():
    events = [txn(float(i + 1), 1.0) for i in range(MAX_RECENT + 50)]
    state, _ = run(events)
    assert len(state["recent"]) == MAX_RECENT
    state, f = observe(state, txn(10 * HORIZON, 1.0))
    assert f["count_1h"] == 1.0
    assert f["seconds_since_prev"] == 10 * HORIZON - (MAX_RECENT + 50)  # from last_ts
    assert len(state["recent"]) == 1


def test_state_survives_a_json_round_trip_unchanged():
    # The state lives in a JSON changelog and in Redis: it must mean the same after both.
    events = [txn(1000.0 + 7 * i, 3.3 + i, merchant=f"m{i % 3}") for i in range(20)]
    state, _ = run(events)
    again = json.loads(json.dumps(state))
    probe = txn(1200.0, 9.9)
    assert observe(again, probe) == observe(state, probe)


def test_observe_does_not_mutate_its_input():
    state, _ = run([txn(1.0), txn(2.0)])
    before = json.dumps(state, sort_keys=True)
    observe(state, txn(3.0))
    assert json.dumps(state, sort_keys=True) == before
