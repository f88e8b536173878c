"""Control events are not trusted: a ``promoted`` event must name a version the registry
holds (else it is dead-lettered and the learner keeps its model; a registry that does not
answer is retried), and operators' retrain requests are rate-limited by the retrainer.
Pure logic, with the registry, the outputs and the retrain replaced by fakes (the whole
path runs for real in tests/integration/test_control_trust.py)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from prometheus_client import REGISTRY

from agents.consume import DeadLetters
from agents.promotions import ModelSwaps, promotion_problems
from driftline.adapters.config import Settings
from driftline.adapters.topic_reader import TopicRecord
from driftline.errors import NotFound
from online_models.retrainer import RequestLimit, Retrainer
from streams.catalog.fraud import FRAUD
from streams.schemas import ControlEvent

CONTROL, DEAD = "unit.fraud.control", "unit.fraud.deadletter"


class FakeOutputs:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    def send(self, topic, key, value, partition=-1) -> None:
        self.sent.append((topic, key, value))


class FakeRegistry:
    """Holds ``versions``; fails ``failures`` times (a registry that does not answer)
    before it answers."""

    def __init__(self, versions: set[int], failures: int = 0) -> None:
        self.versions = versions
        self.failures = failures
        self.asked: list[int] = []

    def get(self, pipeline: str, version: int):
        self.asked.append(version)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("tracking server down")
        if version not in self.versions:
            raise NotFound(f"{pipeline}: no registry version {version}", field="version")
        return object()


def control(offset: int, **fields) -> TopicRecord:
    event = {"kind": "promoted", "pipeline": "fraud", "at": time.time(), "reason": "manual",
             **fields}
    return TopicRecord(CONTROL, 0, offset, b"fraud", json.dumps(event).encode(), time.time())


@pytest.fixture
def swaps():
    outputs = FakeOutputs()
    swaps = ModelSwaps(Settings(namespace="unit"), FRAUD, "unit.fraud.training",
                       learning=None, deadletters=DeadLetters(outputs, "fraud", DEAD))
    swaps.outputs = outputs
    swaps.swapped = []

    async def swap_to(ev: ControlEvent) -> None:  # the learner's swap, recorded
        swaps.swapped.append(ev.registry_version)

    swaps.swap_to = swap_to
    swaps.registry = FakeRegistry({1, 2})
    return swaps


def dead_letters(swaps) -> list[dict]:
    return [json.loads(value) for topic, _, value in swaps.outputs.sent if topic == DEAD]


def counted(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_promotion_of_a_registered_version_swaps_it_in(swaps):
    asyncio.run(swaps.handle([control(0, registry_version=2)]))
    assert swaps.swapped == [2]
    assert dead_letters(swaps) == []


def test_a_promotion_of_an_unknown_version_is_dead_lettered_and_nothing_swaps(swaps):
    before = counted("driftline_deadletters_total", pipeline="fraud", reason="invalid_control")
    asyncio.run(swaps.handle([control(7, registry_version=99), control(8, registry_version=1)]))
    assert swaps.swapped == [1]  # the next event is handled as ever
    [letter] = dead_letters(swaps)
    assert letter["source_topic"] == CONTROL and letter["offset"] == 7
    assert letter["fields"] == ["registry_version"]
    assert "no registry version 99" in letter["error"]
    assert json.loads(letter["value"])["registry_version"] == 99  # the original, kept
    assert counted("driftline_deadletters_total", pipeline="fraud",
                   reason="invalid_control") == before + 1


@pytest.mark.parametrize(("fields", "field"), [
    ({}, "registry_version"),                            # names no version
    ({"registry_version": 0}, "registry_version"),       # not a registry version
    ({"registry_version": 1, "pipeline": "pricing"}, "pipeline"),  # another pipeline's
    ({"registry_version": "1"}, "registry_version"),     # not even a version number
])
def test_a_promotion_wrong_in_itself_is_dead_lettered_without_asking_the_registry(
        swaps, fields, field):
    asyncio.run(swaps.handle([control(3, **fields)]))
    assert swaps.swapped == []
    [letter] = dead_letters(swaps)
    assert field in letter["fields"]
    assert swaps.registry.asked == []


def test_a_registry_that_does_not_answer_is_retried_not_dead_lettered(swaps):
    swaps.registry = FakeRegistry({1, 2}, failures=2)
    asyncio.run(swaps.handle([control(0, registry_version=2)]))
    assert swaps.registry.asked == [2, 2, 2]
    assert swaps.swapped == [2]
    assert dead_letters(swaps) == []


def test_other_control_events_are_not_checked(swaps):
    drift = {"kind": "concept_drift", "pipeline": "fraud", "at": 1.0}
    asyncio.run(swaps.handle([TopicRecord(CONTROL, 0, 0, None, json.dumps(drift).encode(),
                                          1.0)]))
    assert swaps.registry.asked == [] and swaps.swapped == [] and dead_letters(swaps) == []


def test_promotion_problems_is_empty_for_a_well_formed_promotion():
    ev = ControlEvent(kind="promoted", pipeline="fraud", at=0.0, registry_version=4)
    assert promotion_problems(ev, "fraud") == {}


# ---- retrain requests ----------------------------------------------------------------

def test_the_request_limit_slides_over_the_hour():
    limit = RequestLimit(3)
    assert [limit.admit(t) for t in (0.0, 100.0, 200.0)] == [None, None, None]
    assert limit.admit(300.0) == 3300.0  # until the first leaves the window
    assert limit.admit(3599.0) == 1.0    # refusals do not count against later requests
    assert limit.admit(3600.0) is None
    assert limit.admit(3650.0) == 50.0
    assert RequestLimit(0).admit(0.0) == float("inf")
    with pytest.raises(ValueError):
        RequestLimit(-1)


class Recording(Retrainer):
    def __init__(self, settings, pipelines, clock):
        super().__init__(settings, pipelines, registry=object(), clock=clock)
        self.retrained: list[ControlEvent] = []
        self.told: list[ControlEvent] = []

    def _retrain(self, st, ev, manual):
        self.retrained.append(ev)

    def _tell(self, event):
        self.told.append(event)


def request(at: float = 0.0) -> bytes:
    # `at` is the producer's to set: the limit does not read it.
    return ControlEvent(kind="retrain_requested", pipeline="agrawal", at=at, reason="manual",
                        evidence={"requested_by": "someone"}).to_json()


def test_retrain_requests_beyond_the_hourly_limit_are_refused(tmp_path):
    now = [1000.0]
    s = Settings(data_dir=tmp_path, namespace="unit", retrain_requests_per_hour=2)
    retrainer = Recording(s, ["agrawal"], clock=lambda: now[0])
    before = counted("driftline_retrains_total", pipeline="agrawal",
                     outcome="skipped_rate_limited")
    for _ in range(5):
        retrainer.handle("agrawal", request(at=time.time() - 7200))
        now[0] += 60
    assert len(retrainer.retrained) == 2
    refused = [e for e in retrainer.told if e.kind == "retrain_skipped"]
    assert [e.reason for e in refused] == ["rate_limited"] * 3
    assert refused[0].evidence == {"trigger": "retrain_requested", "requests_per_hour": 2,
                                   "retry_after_seconds": 3600.0 - 120.0}
    assert counted("driftline_retrains_total", pipeline="agrawal",
                   outcome="skipped_rate_limited") == before + 3

    # A drift detection is not a request: the limit does not apply to it.
    drift = ControlEvent(kind="concept_drift", pipeline="agrawal", at=time.time(), offset=10,
                         evidence={"direction": "up"}).to_json()
    retrainer.state["agrawal"].last_retrain_at = 0.0  # no cool-down
    retrainer.handle("agrawal", drift)
    assert len(retrainer.retrained) == 3

    now[0] += 3600  # an hour after the first two: requests are admitted again
    retrainer.handle("agrawal", request())
    assert len(retrainer.retrained) == 4


def test_a_limit_of_zero_refuses_every_request_and_a_negative_one_is_refused(tmp_path):
    s = Settings(data_dir=tmp_path, namespace="unit", retrain_requests_per_hour=0)
    retrainer = Recording(s, ["agrawal"], clock=lambda: 0.0)
    retrainer.handle("agrawal", request())
    assert retrainer.retrained == []
    assert retrainer.told[-1].evidence["retry_after_seconds"] is None
    with pytest.raises(ValueError, match="DRIFTLINE_RETRAIN_REQUESTS_PER_HOUR"):
        Recording(s.with_overrides(retrain_requests_per_hour=-1), ["agrawal"], clock=time.time)
