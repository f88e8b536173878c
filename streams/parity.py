"""Training-serving parity: recompute features offline and compare them with what was served.

The replay applies the same :class:`~streams.engine.FeatureEngine` to the raw events in
the order the worker saw them (each partition in offset order, so each entity's events in
the same order) and compares, event by event, with the features the training log says the
model was served. Any difference is a bug: the two paths run the same code.

>>> from streams.catalog.fraud import FRAUD, Transaction
>>> from streams.schemas import TrainingExample
>>> events = [Transaction(event_id="a", card_id="c", merchant_id="m", amount=2.0, ts=10.0)]
>>> offline = recompute(FRAUD, events)
>>> served = TrainingExample(event_id="a", entity="c", event_time=10.0,
...     features={**offline["a"], "amount": 3.0}, score=0.1, model_version="v0.0",
...     label=False, label_time=20.0)
>>> report = compare(offline, [served])
>>> report.ok, report.mismatches[0].feature, report.mismatches[0].served
(False, 'amount', 3.0)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from streams.declarations import PipelineSpec
from streams.engine import DuplicateEvent, FeatureEngine, LateEvent
from streams.schemas import Record, TrainingExample


def recompute(spec: PipelineSpec, events: Iterable[Record]) -> dict[str, dict[str, float]]:
    """Features of every event the worker would have scored, by event id."""
    engine = FeatureEngine(spec)
    states: dict[str, dict] = {}
    out: dict[str, dict[str, float]] = {}
    for event in events:
        entity = spec.entity_of(event)
        try:
            states[entity], features = engine.observe(states.get(entity), event)
        except (LateEvent, DuplicateEvent):
            continue  # dead-lettered or skipped online too
        out[spec.event_id_of(event)] = features
    return out


@dataclass(frozen=True)
class Mismatch:
    event_id: str
    feature: str
    served: float | None
    replayed: float | None


@dataclass
class ParityReport:
    compared: int = 0
    missing: list[str] = field(default_factory=list)  # logged, but not in the replay
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatches

    def lines(self, limit: int = 20) -> list[str]:
        bad = len({m.event_id for m in self.mismatches})
        out = [f"compared {self.compared} logged examples with the replay: "
               f"{self.compared - bad - len(self.missing)} identical, {bad} different, "
               f"{len(self.missing)} missing from the replay"]
        out += [f"  {m.event_id}  {m.feature}: served {m.served!r}, replayed {m.replayed!r}"
                for m in self.mismatches[:limit]]
        out += [f"  {event_id}: no such event in the replay" for event_id in self.missing[:limit]]
        return out


def compare(replayed: dict[str, dict[str, float]], logged: Iterable[TrainingExample],
            online_only: Collection[str] = ()) -> ParityReport:
    """Compare the served features of each logged example with the replayed ones, exactly:
    the same code on the same inputs gives the same floats.

    ``online_only`` features are not compared: their values came from a store as it was
    at serving time (the neighbour feature, from Milvus), which no replay reconstructs.
    """
    report = ParityReport()
    for example in logged:
        report.compared += 1
        offline = replayed.get(example.event_id)
        if offline is None:
            report.missing.append(example.event_id)
            continue
        for name in sorted((set(offline) | set(example.features)) - set(online_only)):
            served, again = example.features.get(name), offline.get(name)
            if served != again:
                report.mismatches.append(Mismatch(example.event_id, name, served, again))
    return report
