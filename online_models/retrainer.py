"""The retrainer (``driftline retrainer``): a process of its own that turns drift into
challengers. Plain blocking code, no event loop: a full retrain takes seconds of CPU and
must never stall a worker or the API.

For each trigger on ``<pipeline>.control`` (a drift detection, or an operator's request):

1. skip it during the cool-down after the previous retrain, when the data after it was
   covered by that retrain already, or when the error did not rise (each with a
   ``retrain_skipped`` event); an operator's request skips neither the cool-down nor the
   covered data, but more than ``retrain_requests_per_hour`` of them in any hour are
   refused (``rate_limited``): anyone who can produce to the control topic can ask;
2. wait until ``min_after_drift`` labels arrived after the detection, so the window holds
   the new concept (giving up after ten minutes: ``retrain_skipped``, ``timeout``);
3. read the newest ``window`` training examples, train a challenger of each candidate
   model (the pipeline's, and its declaration's ``candidates``) and compare the best with
   the champion on the hold-out (:func:`online_models.retrain.retrain`), logging each
   candidate's figures and seconds;
4. register and promote it when it is better by the margin (``promoted``, which the learner
   swaps in), else say why not (``retrain_rejected``); either way with every candidate's
   hold-out figures in the evidence (and so in the new version's lineage).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from driftline.adapters.config import Settings
from driftline.adapters.kafka_clients import client_config
from driftline.adapters.stores import RedisKeys, SnapshotStore, connect
from driftline.adapters.topic_reader import read_range
from monitoring import metrics
from monitoring.logs import annotate, bound
from online_models import lifecycle
from online_models.registry import Lineage, Registry
from online_models.retrain import RetrainOutcome, latest_window, retrain
from streams.declarations import PipelineSpec
from streams.pipelines import PIPELINES
from streams.schemas import ControlEvent, InvalidRecord, TrainingExample, parse
from streams.topics import PipelineTopics

log = logging.getLogger(__name__)
RETRAIN_OUTCOMES = ("promoted", "rejected", "failed", "skipped_timeout", "skipped_cooldown",
                    "skipped_covered", "skipped_not_worse", "skipped_rate_limited")

TRIGGERS = ("concept_drift", "feature_drift", "retrain_requested")


class RequestLimit:
    """At most ``limit`` requests admitted in any ``window`` seconds (a sliding window);
    refused requests do not count. ``limit`` 0 admits none.

    >>> limit = RequestLimit(2, window=3600.0)
    >>> limit.admit(0.0), limit.admit(10.0), limit.admit(20.0)
    (None, None, 3580.0)
    >>> limit.admit(3600.0), limit.admit(3605.0)
    (None, 5.0)
    """

    def __init__(self, limit: int, window: float = 3600.0) -> None:
        if limit < 0:
            raise ValueError(f"a request limit cannot be negative: {limit}")
        self.limit = limit
        self.window = window
        self._admitted: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        """Admit a request at ``now`` (None), or refuse it: the seconds until one would be
        admitted (``inf`` when none ever is)."""
        while self._admitted and self._admitted[0] <= now - self.window:
            self._admitted.popleft()
        if len(self._admitted) >= self.limit:
            if not self._admitted:
                return float("inf")
            return self._admitted[0] + self.window - now
        self._admitted.append(now)
        return None


@dataclass
class _PipelineState:
    spec: PipelineSpec
    topics: PipelineTopics
    requests: RequestLimit  # operators' retrain requests admitted in the last hour
    last_retrain_at: float = 0.0
    covered_until: int = -1  # the newest training offset a retrain has read
    waiting: list[ControlEvent] = field(default_factory=list)


class Retrainer:
    def __init__(self, settings: Settings, pipelines: list[str],
                 registry: Registry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.registry = registry or Registry.from_settings(settings)
        self.clock = clock  # the rate limit's clock: this process's, not the events' `at`
        if settings.retrain_requests_per_hour < 0:
            raise ValueError("DRIFTLINE_RETRAIN_REQUESTS_PER_HOUR (retrain_requests_per_hour) "
                             f"is {settings.retrain_requests_per_hour}; it must be 0 or more")
        self.state = {name: _PipelineState(PIPELINES[name],
                                           PipelineTopics.for_spec(PIPELINES[name],
                                                                   settings.namespace),
                                           RequestLimit(settings.retrain_requests_per_hour))
                      for name in pipelines}
        self._by_topic = {st.topics.control: name for name, st in self.state.items()}
        for name in pipelines:  # at 0 from the start: increase() misses a series' first count
            for outcome in RETRAIN_OUTCOMES:
                metrics.RETRAINS.labels(pipeline=name, outcome=outcome)
        self.stop = threading.Event()
        self.consumer = Consumer({
            **client_config(settings),
            "group.id": settings.prefixed("driftline-retrainer"),
            "enable.auto.commit": False,
        })

    def start(self, timeout: float = 30.0) -> None:
        """Resume each control topic after the last trigger handled; a new deployment
        starts at the topic's end (old detections concern models long gone)."""
        tps = [TopicPartition(topic, 0) for topic in self._by_topic]
        committed = self.consumer.committed(tps, timeout=timeout)
        assigned, fresh = [], []
        for tp in committed:
            if tp.offset < 0:
                _, high = self.consumer.get_watermark_offsets(tp, timeout=timeout)
                tp = TopicPartition(tp.topic, 0, high)
                fresh.append(tp)
            assigned.append(tp)
        if fresh:
            # Remembered at once: a retrainer killed during its first retrain resumes at
            # that trigger, not at the end the next one would start from.
            self.consumer.commit(offsets=fresh, asynchronous=False)
        self.consumer.assign(assigned)
        log.info("retrainer reading %s", ", ".join(f"{t.topic}@{t.offset}" for t in assigned))
        # After a restart, the champion's lineage says what the last retrain covered and
        # when it was made: no second retrain of the same data, and the cool-down holds.
        for name, st in self.state.items():
            champion = self.registry.champion(name)
            if champion is not None and champion.lineage.end_offset is not None:
                st.covered_until = champion.lineage.end_offset
                st.last_retrain_at = champion.created_at

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.5)
            if msg is not None and not msg.error():
                self.handle(self._by_topic[msg.topic()], msg.value())
                self.consumer.commit(message=msg, asynchronous=False)
        self.consumer.close()

    def handle(self, pipeline: str, raw: bytes) -> None:
        with bound(pipeline=pipeline):
            self._handle(pipeline, raw)

    def _handle(self, pipeline: str, raw: bytes) -> None:
        try:
            ev = parse(ControlEvent, raw)
        except InvalidRecord as exc:
            log.error("%s: unreadable control event (%s): %r", pipeline, exc, raw[:200])
            return
        annotate(model_version=ev.model_version, control=ev.kind)
        if ev.kind not in TRIGGERS:
            return
        st = self.state[pipeline]
        manual = ev.kind == "retrain_requested"
        if ev.kind == "concept_drift" and ev.evidence.get("direction") != "up":
            # ADWIN watches both ways: only a rising error rate calls for a new model.
            self._skip(st, ev, "not_worse", {"direction": ev.evidence.get("direction")})
            return
        if manual:
            # Requests skip the cool-down, so they are limited: a producer's flood of them
            # must not keep the retrainer retraining. The event's own `at` is not trusted.
            wait = st.requests.admit(self.clock())
            if wait is not None:
                self._skip(st, ev, "rate_limited", {
                    "requests_per_hour": st.requests.limit,
                    "retry_after_seconds": None if wait == float("inf") else round(wait, 1)})
                return
        since = time.time() - st.last_retrain_at
        if not manual and since < st.spec.retrain.cooldown_seconds:
            self._skip(st, ev, "cooldown", {"seconds_since_last": round(since, 1),
                                            "cooldown_seconds": st.spec.retrain.cooldown_seconds})
            return
        if not manual and ev.offset is not None and ev.offset <= st.covered_until:
            self._skip(st, ev, "covered", {"covered_until": st.covered_until})
            return
        st.last_retrain_at = time.time()
        started = time.perf_counter()
        try:
            self._retrain(st, ev, manual)
        except Exception as exc:  # noqa: BLE001 - report it and wait for the next trigger
            log.exception("%s: retrain failed", pipeline)
            metrics.RETRAINS.labels(pipeline=pipeline, outcome="failed").inc()
            self._tell(ControlEvent(
                kind="retrain_rejected", pipeline=pipeline, at=time.time(), reason="failed",
                offset=ev.offset, evidence={"error": repr(exc), "trigger": ev.kind}))
        metrics.RETRAIN_SECONDS.labels(pipeline=pipeline).observe(time.perf_counter() - started)

    def _retrain(self, st: _PipelineState, ev: ControlEvent, manual: bool) -> None:
        spec, policy = st.spec, st.spec.retrain
        training = st.topics.training
        need = 0 if manual or ev.offset is None else ev.offset + 1 + policy.min_after_drift
        high = self._wait_for_offset(training, need)
        if high < need:
            metrics.RETRAINS.labels(pipeline=spec.name, outcome="skipped_timeout").inc()
            self._tell(ControlEvent(
                kind="retrain_skipped", pipeline=spec.name, at=time.time(), reason="timeout",
                offset=ev.offset, evidence={"trigger": ev.kind, "needed_offset": need,
                                            "reached": high}))
            return
        # A little more than the window: the join may have written an example twice.
        records = read_range(self.settings, training, 0, max(0, high - int(policy.window * 1.05)),
                             high)
        examples, offset_of = [], {}
        for rec in records:
            try:
                ex = parse(TrainingExample, rec.value)
            except InvalidRecord:
                continue
            examples.append(ex)
            # The newest copy of an example the join wrote twice, as latest_window keeps.
            offset_of[ex.event_id] = rec.offset
        window = latest_window(spec, examples)
        outcome = retrain(spec, window)
        window_offsets = sorted(offset_of[ex.event_id] for ex in window)
        st.covered_until = window_offsets[-1]
        # The summary names every candidate's hold-out figures and seconds: the control
        # event and the registered version's lineage keep them.
        evidence = {"trigger": ev.kind, "trigger_offset": ev.offset,
                    "trigger_evidence": ev.evidence, **outcome.summary()}
        for name, figures in outcome.candidates.items():
            log.info("%s: candidate %s %s=%.4f, trained in %.2f s", spec.name, name,
                     outcome.metric, figures[outcome.metric], outcome.seconds[name])
        for name, error in outcome.failed.items():
            log.error("%s: candidate %s failed after %.2f s: %s", spec.name, name,
                      outcome.seconds[name], error)
        log.warning("%s: challenger %s %s=%.4f vs champion %.4f -> %s", spec.name,
                    outcome.spec, outcome.metric, outcome.challenger[outcome.metric],
                    outcome.champion[outcome.metric],
                    "promote" if outcome.promote else "reject")
        if not outcome.promote:
            metrics.RETRAINS.labels(pipeline=spec.name, outcome="rejected").inc()
            self._tell(ControlEvent(
                kind="retrain_rejected", pipeline=spec.name, at=time.time(),
                model_version=ev.model_version, offset=st.covered_until,
                reason="not better", evidence=evidence))
            return
        parent = self.registry.champion(spec.name) or self._register_bootstrap(st, outcome)
        lineage = Lineage(
            reason="manual" if manual else "drift",
            evidence=evidence, spec=outcome.spec, declaration=spec.describe(),
            topic=training, start_offset=window_offsets[0], end_offset=window_offsets[-1],
            start_time=min(e.event_time for e in window),
            end_time=max(e.event_time for e in window),
            examples=len(window), parent=parent.version)
        scores = {**outcome.challenger,
                  **{f"champion_{k}": v for k, v in outcome.champion.items()}}
        registered = self.registry.register(spec.name, outcome.challenger_model, lineage,
                                            scores)
        lifecycle.promote(self.settings, self.registry, spec.name, registered.version,
                          reason=lineage.reason, evidence=evidence)
        metrics.RETRAINS.labels(pipeline=spec.name, outcome="promoted").inc()
        log.warning("%s: promoted registry version %d (parent %d)", spec.name, registered.version,
                    parent.version)

    def _register_bootstrap(self, st: _PipelineState, outcome: RetrainOutcome):
        """Before the first promotion, register the online model serving now, so that the
        challenger has a parent to roll back to."""
        async def load():
            client = connect(self.settings)
            try:
                return await SnapshotStore(client, RedisKeys(self.settings.redis_prefix,
                                                             st.spec.name)).load()
            finally:
                await client.aclose()

        snap = asyncio.run(load())
        if snap is None:
            raise RuntimeError(f"{st.spec.name}: no serving model to register as the parent")
        lineage = Lineage(reason="bootstrap",
                          evidence={"serving_version": snap.version},
                          spec=st.spec.model,  # recorded by its import path
                          declaration=st.spec.describe(), topic=st.topics.training,
                          start_offset=None, end_offset=None, start_time=None, end_time=None,
                          examples=0, parent=None)
        bootstrap = self.registry.register(st.spec.name, snap.model, lineage, outcome.champion)
        return self.registry.promote(st.spec.name, bootstrap.version)

    def _wait_for_offset(self, topic: str, need: int, timeout: float = 600.0) -> int:
        """The training topic's end once it is past ``need``; what it reached after
        ``timeout``, or when the process is stopping."""
        probe = Consumer({**client_config(self.settings),
                          "group.id": f"driftline-probe-{uuid.uuid4().hex}"})
        deadline = time.monotonic() + timeout
        try:
            while True:
                _, high = probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
                if high >= need or time.monotonic() > deadline or self.stop.is_set():
                    return high
                self.stop.wait(1.0)
        finally:
            probe.close()

    def _skip(self, st: _PipelineState, ev: ControlEvent, why: str, evidence: dict) -> None:
        metrics.RETRAINS.labels(pipeline=st.spec.name, outcome=f"skipped_{why}").inc()
        log.info("%s: %s ignored (%s)", st.spec.name, ev.kind, why)
        self._tell(ControlEvent(
            kind="retrain_skipped", pipeline=st.spec.name, at=time.time(), reason=why,
            offset=ev.offset, model_version=ev.model_version,
            evidence={"trigger": ev.kind, **evidence}))


    def _tell(self, event: ControlEvent) -> None:
        """Publish an outcome; a Kafka hiccup is logged, it does not stop the retrainer."""
        try:
            lifecycle.send_control(self.settings, event)
        except Exception:  # noqa: BLE001
            log.exception("%s: could not publish %s", event.pipeline, event.kind)


def run_retrainer(settings: Settings, pipelines: list[str]) -> None:
    """The process's main: metrics on ``retrainer_port``, then the loop until SIGTERM."""
    import signal

    from prometheus_client import start_http_server

    from monitoring.logs import configure

    configure(settings.log_level, settings.log_format, settings.log_entities,
              settings.log_entity_key)
    retrainer = Retrainer(settings, pipelines)
    retrainer.start()
    signal.signal(signal.SIGTERM, lambda *_: retrainer.stop.set())
    signal.signal(signal.SIGINT, lambda *_: retrainer.stop.set())
    # Ready (its port answers) only once it reads the control topics.
    start_http_server(settings.retrainer_port, addr=settings.worker_host)
    retrainer.run()
