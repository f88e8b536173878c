"""Streaming features from a declaration, per entity, in event time. Pure: no I/O.

An entity's state is a small JSON-able dict (a Faust table's value, mirrored to Redis).
:meth:`FeatureEngine.observe` applies one event and returns the new state and the event's
features; given the same events in the same order it gives the same features, in the
worker, in the replay that checks parity, in the API and in tests.

Event time rules:

* an event is placed at its own time: windows count only events at or before it, so an
  out-of-order event sees the past as it was (minus events not yet arrived);
* an event more than ``allowed_lateness`` seconds behind the entity's newest event is
  rejected with :class:`LateEvent`;
* an event whose id the state still remembers is rejected with :class:`DuplicateEvent`
  (redelivery after a crash must not be counted twice);
* given the wall clock (``now``), an event more than ``max_future_skew`` seconds ahead of
  it is rejected with :class:`FutureEvent`: it would become its entity's newest, and
  every real event after it late.

An event whose features are not finite, or beyond ``feature_limit`` in magnitude, is
rejected with :class:`UnsafeFeatures`, its state unchanged: one such value learned made
every score of the model NaN.

>>> from streams.catalog.fraud import FRAUD
>>> from streams.catalog.fraud import Transaction
>>> engine = FeatureEngine(FRAUD)
>>> t1 = Transaction(event_id="a", card_id="c", merchant_id="m1", amount=10.0, ts=100.0)
>>> t2 = Transaction(event_id="b", card_id="c", merchant_id="m2", amount=30.0, ts=130.0)
>>> state, f1 = engine.observe(None, t1)
>>> state, f2 = engine.observe(state, t2)
>>> f2["count_1m"], f2["sum_1m"], f2["seconds_since_prev"], f2["new_merchant"]
(2.0, 40.0, 30.0, 1.0)
>>> engine.observe(state, t2)
Traceback (most recent call last):
...
streams.engine.DuplicateEvent: event b was applied already
"""

from __future__ import annotations

import bisect
import math
import statistics
from typing import Any

from streams.declarations import (
    OPERATORS,
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
from streams.schemas import InvalidRecord, Record

State = dict[str, Any]


class EventTimeError(ValueError):
    """The event's time (its ``field``) is out of the bounds the pipeline declares."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        super().__init__(reason)


class LateEvent(EventTimeError):
    """The event is further behind its entity's newest event than the allowed lateness."""


class FutureEvent(EventTimeError):
    """The event's time is further ahead of the wall clock than the allowed skew."""


class DuplicateEvent(ValueError):
    """The event's id was applied to this entity's state already."""


class UnsafeFeatures(InvalidRecord):
    """Features the model must not see: ``errors`` maps each to the reason."""


class FeatureEngine:
    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.aggs = [f for f in spec.features if isinstance(f, Agg)]
        # Event fields that windowed aggregations need later, kept per recent event.
        self.kept = sorted({f.field for f in self.aggs if f.field} |
                           {f.where[0] for f in self.aggs if f.where})
        self.horizon = max((f.window.size for f in self.aggs), default=0.0)

    # ---- the one entry point -----------------------------------------------------------

    def observe(self, state: State | None, event: Record,
                now: float | None = None) -> tuple[State, dict[str, float]]:
        """Apply ``event``; return the new state and the event's features. ``now``, the
        wall clock, bounds how far ahead event time may be (None: no bound, for replays).

        ``state`` is not modified. Raises :class:`LateEvent`, :class:`FutureEvent`,
        :class:`DuplicateEvent` or :class:`UnsafeFeatures`.
        """
        prev = state or self.empty()
        t = self.spec.time_of(event)
        if now is not None and t > now + self.spec.max_future_skew:
            raise FutureEvent(self.spec.time_field,
                              f"{t - now:.3f}s ahead of the wall clock; the largest skew "
                              f"allowed is {self.spec.max_future_skew:g}s")
        event_id = self.spec.event_id_of(event)
        if any(r[1] == event_id for r in prev["recent"]):
            raise DuplicateEvent(f"event {event_id} was applied already")
        newest = prev["newest"]
        if newest is not None and t < newest - self.spec.allowed_lateness:
            raise LateEvent(self.spec.time_field,
                            f"{newest - t:.3f}s behind the entity's newest event; "
                            f"the allowed lateness is {self.spec.allowed_lateness:g}s")
        fields = event.model_dump()
        features = self.checked(self._features(prev, fields, t))
        return self._apply(prev, fields, t, event_id), features

    def checked(self, features: dict[str, float]) -> dict[str, float]:
        """``features``, if each is finite and within ``feature_limit``; else
        :class:`UnsafeFeatures`.

        >>> from streams.catalog.fraud import FRAUD
        >>> try:
        ...     FeatureEngine(FRAUD).checked({"amount": float("nan"), "sum_1m": 1e300})
        ... except UnsafeFeatures as exc:
        ...     print(*exc.errors, sep=", ")
        amount, sum_1m
        """
        limit = self.spec.feature_limit
        bad = {}
        for name, value in features.items():
            if not -limit <= value <= limit:  # NaN fails both comparisons
                bad[name] = (f"not a finite number ({value})" if not math.isfinite(value)
                             else f"{value:g} is beyond the feature limit {limit:g}")
        if bad:
            raise UnsafeFeatures(bad)
        return features

    def features_for(self, state: State | None, event: Record) -> dict[str, float]:
        """The features ``event`` gets against ``state``, without applying it and without
        the lateness and duplicate checks (the API scores what it is asked to score)."""
        prev = state or self.empty()
        event_id = self.spec.event_id_of(event)
        if any(r[1] == event_id for r in prev["recent"]):
            prev = {**prev, "recent": [r for r in prev["recent"] if r[1] != event_id]}
        return self._features(prev, event.model_dump(), self.spec.time_of(event))

    def empty(self) -> State:
        return {"recent": [], "newest": None, "seq": 0, "ewm": {}, "seen": {}}

    # ---- features ----------------------------------------------------------------------

    def _features(self, prev: State, fields: dict[str, Any], t: float) -> dict[str, float]:
        # Recent events at or before t: [ts, event_id, seq, {kept fields}]
        past = [r for r in prev["recent"] if r[0] <= t]
        ctx: dict[str, Any] = dict(fields)
        out: dict[str, float] = {}
        windows: dict[Sliding | Tumbling, list] = {}  # each window's rows, found once
        for f in self.spec.features:
            if isinstance(f, Raw):
                value = _num(fields[f.field or f.name])
            elif isinstance(f, Agg):
                rows = windows.get(f.window)
                if rows is None:
                    rows = windows[f.window] = _in_window(f.window, past, fields, t)
                value = self._aggregate(f, rows)
            elif isinstance(f, SincePrevious):
                times = [r[0] for r in past]
                if not times and prev["newest"] is not None and prev["newest"] <= t:
                    times = [prev["newest"]]  # older than the horizon, still the previous
                value = min(f.cap, t - max(times)) if times else f.cap
            elif isinstance(f, Ewma):
                before = prev["ewm"].get(f.name)
                value = _num(fields[f.field]) if before is None else before
            elif isinstance(f, FirstSeen):
                value = 0.0 if str(fields[f.field]) in prev["seen"].get(f.name, {}) else 1.0
            elif isinstance(f, Derived):
                value = float(f.fn(ctx))
            else:  # pragma: no cover - the declaration validated the kinds
                raise TypeError(f"unknown feature {f!r}")
            out[f.name] = value
            ctx[f.name] = value
        return out

    def _aggregate(self, f: Agg, rows: list[dict[str, Any]]) -> float:
        """``f`` over the rows of its window (which it does not change)."""
        if f.where is not None:
            name, op, operand = f.where
            test = OPERATORS[op]
            rows = [row for row in rows if test(row[name], operand)]
        if f.agg == "count":
            return float(len(rows))
        if f.agg == "distinct":
            return float(len({str(row[f.field]) for row in rows}))
        values = [_num(row[f.field]) for row in rows]
        if not values:
            return 0.0
        if f.agg == "sum":
            return math.fsum(values)
        if f.agg == "mean":
            return math.fsum(values) / len(values)
        if f.agg == "min":
            return min(values)
        if f.agg == "max":
            return max(values)
        return statistics.pstdev(values) if len(values) > 1 else 0.0  # std

    # ---- state -------------------------------------------------------------------------

    def _apply(self, prev: State, fields: dict[str, Any], t: float, event_id: str) -> State:
        seq = prev["seq"] + 1
        recent = list(prev["recent"])  # rows are never changed once made: shared
        kept = {k: fields[k] for k in self.kept}
        bisect.insort(recent, [t, event_id, seq, kept], key=lambda r: (r[0], r[2]))
        newest = t if prev["newest"] is None else max(prev["newest"], t)
        # Keep what a late event (up to the allowed lateness) may still need.
        floor = newest - self.horizon - self.spec.allowed_lateness
        recent = [r for r in recent if r[0] > floor][-self.spec.max_recent:]
        ewm = dict(prev["ewm"])
        seen = {k: dict(v) for k, v in prev["seen"].items()}
        for f in self.spec.features:
            if isinstance(f, Ewma):
                x = _num(fields[f.field])
                before = ewm.get(f.name)
                ewm[f.name] = x if before is None else (1 - f.alpha) * before + f.alpha * x
            elif isinstance(f, FirstSeen):
                memory = seen.setdefault(f.name, {})
                key = str(fields[f.field])
                memory[key] = max(t, memory.get(key, t))
                if len(memory) > f.memory:
                    seen[f.name] = dict(sorted(memory.items(), key=lambda kv: kv[1])[-f.memory:])
        return {"recent": recent, "newest": newest, "seq": seq, "ewm": ewm, "seen": seen}


def _in_window(window: Sliding | Tumbling, past: list, fields: dict[str, Any],
               t: float) -> list[dict[str, Any]]:
    """The kept fields of the past events in ``window`` ending at ``t``, and the event's."""
    if isinstance(window, Sliding):
        start_open = t - window.size
        rows = [r[3] for r in past if r[0] > start_open]
    else:
        start = math.floor(t / window.size) * window.size
        rows = [r[3] for r in past if r[0] >= start]
    rows.append(fields)
    return rows


def _num(value: Any) -> float:
    return float(value) if value is not None else 0.0
