"""Per-card streaming features of the fraud pipeline, as pure functions of event time.

A card's state is a small JSON-able dict (it lives in a changelog-backed Faust table and,
mirrored, in Redis). :func:`observe` takes the state and a transaction and returns the new
state and the features of that transaction, computed over sliding windows that end at the
transaction's own timestamp and include it. The worker, the scoring API, replays and
tests all call this one function, so the features a model learns from are the features
it is served.

>>> from streams.schemas import Transaction
>>> t1 = Transaction(event_id="a", card_id="c", merchant_id="m1", amount=10.0, ts=100.0)
>>> t2 = Transaction(event_id="b", card_id="c", merchant_id="m2", amount=30.0, ts=130.0)
>>> state, f1 = observe(None, t1)
>>> state, f2 = observe(state, t2)
>>> f2["count_1m"], f2["sum_1m"], f2["seconds_since_prev"], f2["new_merchant"]
(2.0, 40.0, 30.0, 1.0)
>>> f2["amount_to_mean"]
3.0
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from streams.schemas import Transaction

# Sliding windows, in seconds of event time, and their feature-name suffixes.
WINDOWS: dict[str, float] = {"1m": 60.0, "10m": 600.0, "1h": 3600.0}
HORIZON = max(WINDOWS.values())
# Bounds that keep a card's state small whatever its traffic.
MAX_RECENT = 512
MAX_MERCHANTS = 64
# "Time since the previous event" of a card's first event: a day, not infinity, so that
# linear models can use it.
NO_PREVIOUS = 86_400.0
# Card testing tries a stolen number with tiny charges: amounts below this count as tiny.
SMALL_AMOUNT = 5.0
# Weight of the newest amount in the card's typical (exponentially weighted) amount.
AMOUNT_EWM_ALPHA = 0.2

FEATURE_NAMES: tuple[str, ...] = (
    "amount",
    "log_amount",
    *(f"{agg}_{w}" for w in WINDOWS for agg in ("count", "sum")),
    "distinct_merchants_10m",
    "small_count_10m",
    "seconds_since_prev",
    "amount_to_mean",
    "new_merchant",
)

CardState = dict[str, Any]


def empty_state() -> CardState:
    """A card never seen: no recent events, no merchants, no typical amount."""
    return {"recent": [], "merchants": {}, "last_ts": None, "amount_ewm": None, "n": 0}


def observe(state: CardState | None, txn: Transaction) -> tuple[CardState, dict[str, float]]:
    """Apply ``txn`` to a card's state; return the new state and ``txn``'s features.

    ``state`` is not modified. Events may arrive out of order: each is placed at its
    event time, and windows only count events at or before the transaction's time.
    """
    prev = state or empty_state()
    recent = [tuple(x) for x in prev["recent"]]
    merchants: dict[str, float] = dict(prev["merchants"])

    features = _features(recent, merchants, prev, txn)

    bisect.insort(recent, (txn.ts, txn.amount, txn.merchant_id))
    newest = recent[-1][0]
    recent = [r for r in recent if r[0] > newest - HORIZON][-MAX_RECENT:]
    merchants[txn.merchant_id] = max(txn.ts, merchants.get(txn.merchant_id, txn.ts))
    if len(merchants) > MAX_MERCHANTS:
        keep = sorted(merchants.items(), key=lambda kv: kv[1])[-MAX_MERCHANTS:]
        merchants = dict(keep)
    ewm = prev["amount_ewm"]
    new_state: CardState = {
        "recent": [list(r) for r in recent],
        "merchants": merchants,
        "last_ts": txn.ts if prev["last_ts"] is None else max(prev["last_ts"], txn.ts),
        "amount_ewm": txn.amount if ewm is None
        else (1 - AMOUNT_EWM_ALPHA) * ewm + AMOUNT_EWM_ALPHA * txn.amount,
        "n": prev["n"] + 1,
    }
    return new_state, features


def _features(recent: list[tuple], merchants: dict[str, float], prev: CardState,
              txn: Transaction) -> dict[str, float]:
    t = txn.ts
    out: dict[str, float] = {"amount": txn.amount, "log_amount": math.log1p(txn.amount)}
    for name, width in WINDOWS.items():
        inside = [r for r in recent if t - width < r[0] <= t]
        out[f"count_{name}"] = float(len(inside) + 1)
        out[f"sum_{name}"] = round(sum(r[1] for r in inside) + txn.amount, 6)
    last_10m = [r for r in recent if t - WINDOWS["10m"] < r[0] <= t]
    out["distinct_merchants_10m"] = float(len({r[2] for r in last_10m} | {txn.merchant_id}))
    small = sum(1 for r in last_10m if r[1] < SMALL_AMOUNT) + (txn.amount < SMALL_AMOUNT)
    out["small_count_10m"] = float(small)
    earlier = [r[0] for r in recent if r[0] <= t]
    if not earlier and prev["last_ts"] is not None and prev["last_ts"] <= t:
        earlier = [prev["last_ts"]]  # older than the horizon, still the previous event
    out["seconds_since_prev"] = min(NO_PREVIOUS, t - max(earlier)) if earlier else NO_PREVIOUS
    ewm = prev["amount_ewm"]
    out["amount_to_mean"] = round(txn.amount / ewm, 6) if ewm else 1.0
    out["new_merchant"] = 0.0 if txn.merchant_id in merchants else 1.0
    return out
