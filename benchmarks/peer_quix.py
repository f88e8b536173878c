"""The peer a user would pick instead: Quix Streams computing the fraud features per card.

    ~/.cache/driftline/peer-venv/bin/python benchmarks/peer_quix.py --mode features \\
        --topic NS.fraud.events --output NS.fraud.quix-features --events 30000 \\
        --group NS.quix-features --state-dir /tmp/quix --result /tmp/quix.json

Runs in a virtual environment of its own (Quix Streams 3.28 requires confluent-kafka
< 2.13, Driftline pins a newer one): ``benchmarks/ingest.py`` builds it and starts this
script, so it imports nothing of Driftline. Two modes, each a cold read of the backlog from
its start with a consumer group of its own:

* ``bare``: an Application whose dataframe only json-decodes each value (Quix's own
  deserializer) and counts it: the library's floor, to compare with a bare Faust agent;
* ``features``: the declared features of the ``fraud`` pipeline
  (``streams/catalog/fraud.py``), per card (the message key), with Quix's own stateful
  processing, ``sdf.apply(..., stateful=True)`` over its RocksDB store (changelog topics
  on, the default), and one feature record per event written to ``--output``.

The features are an approximation of Driftline's engine (:mod:`streams.engine`) written
for Quix's state, not Quix's window operators: a sliding window there emits one result per
window, while a feature vector needs several windows and per-event values together. Each
card's state is one JSON dict (its events of the last hour, the previous event's time,
the EWMA, the last 64 merchants); from it come the counts and sums of amount over 1 min,
10 min and 1 h, the distinct merchants and small charges in 10 min, the largest amount in
1 h, the seconds since the previous event, the EWMA of amount (alpha 0.2) and the amount
over it, and whether the merchant is new to the card. Like the engine, windows hold the
events at or before the event's own time and a redelivered event id is not counted twice;
unlike it, a late event is not rejected and nothing is mirrored to Redis. On the
generator's stream (in order per card) the values equal the engine's: checked on 3,000
events when this was written.

When ``--events`` outputs are processed the application stops and ``--result`` gets JSON:
wall time and CPU seconds from the first event to the last, and when ``run`` returned
(after its last commit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from quixstreams import Application, State

MINUTE, HOUR = 60.0, 3600.0
TINY_AMOUNT = 5.0
ALPHA = 0.2
MERCHANT_MEMORY = 64
NO_PREVIOUS = 86_400.0


def fraud_features(value: dict, state: State) -> dict:
    """The fraud pipeline's features of one transaction, from and into its card's state."""
    card = state.get("card") or {"recent": [], "newest": None, "ewm": None, "seen": {}}
    t, amount, merchant = float(value["ts"]), float(value["amount"]), value["merchant_id"]
    recent = [r for r in card["recent"] if r[3] != value["event_id"]]  # redelivered
    past = [r for r in recent if r[0] <= t]

    def window(size: float) -> list:
        return [r for r in past if r[0] > t - size] + [[t, amount, merchant]]

    out = {"event_id": value["event_id"], "card_id": value["card_id"], "ts": t,
           "amount": amount, "log_amount": math.log1p(amount)}
    for name, size in (("1m", MINUTE), ("10m", 10 * MINUTE), ("1h", HOUR)):
        rows = window(size)
        out[f"count_{name}"] = float(len(rows))
        out[f"sum_{name}"] = math.fsum(r[1] for r in rows)
    last_10m = window(10 * MINUTE)
    out["distinct_merchants_10m"] = float(len({r[2] for r in last_10m}))
    out["small_count_10m"] = float(sum(r[1] < TINY_AMOUNT for r in last_10m))
    out["amount_max_1h"] = max(r[1] for r in window(HOUR))
    times = [r[0] for r in past] or ([card["newest"]] if card["newest"] is not None
                                     and card["newest"] <= t else [])
    out["seconds_since_prev"] = min(NO_PREVIOUS, t - max(times)) if times else NO_PREVIOUS
    ewm = amount if card["ewm"] is None else card["ewm"]
    out["amount_ewm"] = ewm
    out["amount_to_mean"] = amount / ewm if ewm else 1.0
    out["new_merchant"] = 0.0 if merchant in card["seen"] else 1.0

    newest = t if card["newest"] is None else max(card["newest"], t)
    recent.append([t, amount, merchant, value["event_id"]])
    recent.sort(key=lambda r: r[0])
    seen = card["seen"]
    seen[merchant] = max(t, seen.get(merchant, t))
    if len(seen) > MERCHANT_MEMORY:
        seen = dict(sorted(seen.items(), key=lambda kv: kv[1])[-MERCHANT_MEMORY:])
    state.set("card", {"recent": [r for r in recent if r[0] > newest - HOUR],
                       "newest": newest, "ewm": (1 - ALPHA) * ewm + ALPHA * amount,
                       "seen": seen})
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (as ``benchmarks/ingest.py`` reads it)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("bare", "features"), required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output", help="features: the topic of the feature records")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--group", required=True, help="the consumer group")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="stop when no message came for this long")
    args = parser.parse_args()

    started = time.time()
    app = Application(broker_address=args.bootstrap, consumer_group=args.group,
                      auto_offset_reset="earliest", state_dir=str(args.state_dir),
                      loglevel="WARNING")
    sdf = app.dataframe(app.topic(args.topic, value_deserializer="json"))
    seen = {"n": 0}

    def count(value: dict) -> dict:
        seen["n"] += 1
        if seen["n"] == 1:
            seen["first"], seen["first_cpu"] = time.time(), time.process_time()
            seen["first_busy"] = machine_busy()
        if seen["n"] == args.events:
            seen["done"], seen["done_cpu"] = time.time(), time.process_time()
            seen["done_busy"] = machine_busy()
        return value

    if args.mode == "features":
        sdf = sdf.apply(fraud_features, stateful=True)
        sdf.to_topic(app.topic(args.output, value_serializer="json"))
    sdf = sdf.apply(count)
    app.run(count=args.events, timeout=args.idle_timeout, collect=False)
    stopped = time.time()
    if seen["n"] < args.events:
        raise SystemExit(f"read {seen['n']} of {args.events} events before going idle")
    partial = args.result.with_suffix(".partial")
    partial.write_text(json.dumps({
        "events": seen["n"], "started": started, "first": seen["first"],
        "done": seen["done"], "stopped": stopped,
        "cpu_seconds": seen["done_cpu"] - seen["first_cpu"],
        "machine_busy_seconds": seen["done_busy"] - seen["first_busy"]}))
    partial.replace(args.result)


if __name__ == "__main__":
    main()
