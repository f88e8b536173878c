"""Promotions and rollbacks: a registry version becomes the model learned and served.

::

    <p>.control --control--> a ``promoted`` event swaps the learner's model
    the registry's champion --reconcile (a timer)--> the same, when a promotion was missed

Anyone who can produce to the control topic can send a ``promoted`` event, so one is
checked before it is acted on (:func:`promotion_problems`, then the registry): an event
that names no version, another pipeline, or a version the registry does not hold is
wrong in itself and dead-lettered with the reason (``invalid_control``), and the learner
keeps its model. A registry that does not answer is not the event's fault: the check is
retried until it answers, holding the control agent (never the learner).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

from agents.consume import DeadLetters
from agents.faust_fixes import retried
from agents.learning import Learning
from driftline.adapters.config import Settings
from driftline.adapters.topic_reader import read_range
from driftline.errors import NotFound
from monitoring import metrics
from online_models import evaluation
from streams.declarations import PipelineSpec
from streams.schemas import ControlEvent, InvalidRecord, TrainingExample, parse

log = logging.getLogger(__name__)
REGISTRY_RETRY_LONGEST_SECONDS = 5.0


class RegistryUnavailable(Exception):
    """The registry did not answer whether a version exists: retried, never dead-lettered."""


def promotion_problems(event: ControlEvent, pipeline: str) -> dict[str, str]:
    """What makes a ``promoted`` event on ``pipeline``'s control topic wrong in itself,
    before the registry is asked (field -> reason; empty: nothing).

    >>> ev = ControlEvent(kind="promoted", pipeline="fraud", at=0.0, registry_version=3)
    >>> promotion_problems(ev, "fraud")
    {}
    >>> sorted(promotion_problems(ev.model_copy(update={"pipeline": "pricing",
    ...                                                 "registry_version": None}), "fraud"))
    ['pipeline', 'registry_version']
    """
    problems = {}
    if event.registry_version is None:
        problems["registry_version"] = "a promoted event must name a registry version"
    elif event.registry_version < 1:
        problems["registry_version"] = (f"{event.registry_version} is not a registry "
                                        "version (they start at 1)")
    if event.pipeline != pipeline:
        problems["pipeline"] = f"names pipeline {event.pipeline!r} on {pipeline}'s control topic"
    return problems


class ModelSwaps:
    """Handles the control topic and reconciles the learner with the registry."""

    def __init__(self, settings: Settings, spec: PipelineSpec, training_topic: str,
                 learning: Learning, deadletters: DeadLetters) -> None:
        self.settings = settings
        self.spec = spec
        self.name = spec.name
        self.training_topic = training_topic
        self.learning = learning
        self.deadletters = deadletters

    async def handle(self, records: Sequence[Any]) -> None:
        for rec in records:
            try:
                event = parse(ControlEvent, rec.value)
            except InvalidRecord as exc:
                self.deadletters.send(rec, exc, "control")
                continue
            metrics.CONTROL_EVENTS.labels(pipeline=self.name, kind=event.kind).inc()
            if event.kind != "promoted":
                continue
            try:
                await self.check_promotion(event)
            except InvalidRecord as exc:
                self.deadletters.send(rec, exc, "control",
                                      registry_version=event.registry_version)
                continue
            await self.swap_to(event)

    async def check_promotion(self, event: ControlEvent) -> None:
        """Raise :class:`InvalidRecord` when ``event`` may not be acted on: it names no
        version, another pipeline, or a version the registry does not hold. Asks the
        registry until it answers (a transient fault is retried, not dead-lettered)."""
        problems = promotion_problems(event, self.name)
        if problems:
            raise InvalidRecord(problems)
        version = event.registry_version
        await retried(lambda: asyncio.to_thread(self._registered, version),
                      RegistryUnavailable,
                      f"{self.name}: checking registry version {version} of a promotion "
                      "(held: the registry did not answer)",
                      longest=REGISTRY_RETRY_LONGEST_SECONDS,
                      on_retry=metrics.BATCH_RETRIES.labels(pipeline=self.name,
                                                            kind="control").inc)

    def _registered(self, version: int) -> None:
        """Return when ``version`` of this pipeline is in the registry; raise
        :class:`InvalidRecord` when the registry says it is not, and
        :class:`RegistryUnavailable` when it does not answer."""
        try:
            self.registry.get(self.name, version)
        except NotFound as exc:
            raise InvalidRecord({"registry_version": f"{self.name} has no registry version "
                                                     f"{version}"}) from exc
        except Exception as exc:  # noqa: BLE001 - the registry (or opening it) failed
            raise RegistryUnavailable(f"{self.name}: the registry did not say whether "
                                      f"version {version} exists: {exc!r}") from exc

    async def reconcile(self, *_: Any) -> None:
        """Serve the registry's champion if the learner does not: a promotion whose control
        event was dead-lettered (its model could not be loaded then), or an alias moved by
        hand. The online model before any promotion is left alone while the champion is
        only its own registered copy (the retrainer's bootstrap)."""
        learner = self.learning.learner
        if learner is None:
            return
        try:
            champion = await asyncio.to_thread(self.registry.champion, self.name)
            if champion is None or champion.version == learner.revision:
                return
            if learner.revision == 0 and champion.lineage.reason == "bootstrap":
                return
            log.warning("%s: serving v%d but the registry's champion is v%d: swapping it in",
                        self.name, learner.revision, champion.version)
            await self.swap_to(ControlEvent(kind="promoted", pipeline=self.name,
                                            at=time.time(), reason="reconcile",
                                            registry_version=champion.version))
        except Exception:  # noqa: BLE001 - the next round tries again
            log.warning("%s: could not reconcile with the registry", self.name, exc_info=True)

    async def swap_to(self, ev: ControlEvent) -> None:
        """Make registry version ``ev.registry_version`` the model learned and served.

        Its training data ends at some offset of the training topic; the examples the
        learner applied after that (at most one retrain window of them) are applied to it
        too before the swap, so it starts as up to date as the model it replaces.
        """
        learning = self.learning
        async with learning.lock:
            learner = await learning.restore()
            if learner.revision == ev.registry_version:
                return  # redelivered: swapped already
            started = time.perf_counter()
            model, lineage = await asyncio.to_thread(self._load_registered, ev.registry_version)
            window, next_offset = self.spec.retrain.window, learner.next_offset or 0
            end = lineage.end_offset if lineage.end_offset is not None else -1
            catch_from = max(end + 1, next_offset - window, 0)
            first = catch_from
            if lineage.start_offset is not None:  # its data's newest rows: the reference
                first = min(max(lineage.start_offset,
                                end + 1 - self.spec.drift.reference_size), catch_from)
            records = await asyncio.to_thread(read_range, self.settings, self.training_topic,
                                              0, first, next_offset)
            reference, rows, seen, caught_up = [], [], set(), 0
            for rec in records:
                try:
                    example = parse(TrainingExample, rec.value)
                except InvalidRecord:
                    continue
                rows.append(example.features)
                if rec.offset <= end:
                    reference.append(example.features)
                elif rec.offset >= catch_from and example.event_id not in seen:
                    seen.add(example.event_id)
                    model.learn_one(example.features,
                                    evaluation.as_label(self.spec.task, example.label))
                    caught_up += 1
            # Examples up to `end` that the learner has not reached yet (it lags the
            # retrainer) are in the new model already: they will not be learned again.
            learner.swap(model, ev.registry_version,
                         (reference or rows)[-self.spec.drift.reference_size:],
                         learned_through=end)
            await learning.publish()
            await learning.checkpoint()
            metrics.MODEL_PROMOTIONS.labels(pipeline=self.name,
                                            reason=ev.reason or "unknown").inc()
            log.warning("%s: now serving registry version %d (%s), caught up on %d examples "
                        "in %.2fs", self.name, ev.registry_version, ev.reason, caught_up,
                        time.perf_counter() - started)

    def _load_registered(self, version: int):
        registry = self.registry
        return registry.load(self.name, version), registry.get(self.name, version).lineage

    def open_registry(self) -> None:
        """Open the registry (MLflow's import, the database) ahead of the first promotion
        (the worker does before it consumes), so that a promotion pauses learning for the
        load of one model only."""
        try:
            self.registry  # noqa: B018 - opening it is the point
        except Exception:  # noqa: BLE001 - a promotion will retry and report it
            log.warning("%s: the model registry is not reachable yet", self.name, exc_info=True)

    @functools.cached_property
    def registry(self):
        from online_models.registry import Registry

        return Registry.from_settings(self.settings)
