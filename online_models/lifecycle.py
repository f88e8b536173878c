"""Operator actions on a pipeline's model, shared by the CLI and the admin API: each is a
registry change plus an event on ``<pipeline>.control``, which the learner acts on (it is
the only writer of the served model, so nothing else swaps it).

Blocking code: call it from async code with ``asyncio.to_thread``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from driftline.adapters.config import Settings
from driftline.adapters.kafka_clients import kafka_producer
from streams.pipelines import PIPELINES
from streams.schemas import ControlEvent
from streams.topics import PipelineTopics

if TYPE_CHECKING:  # the registry imports MLflow, which scoring processes never need
    from online_models.registry import ModelVersion, Registry


def send_control(settings: Settings, event: ControlEvent, timeout: float = 15.0) -> None:
    """Publish ``event`` on its pipeline's control topic and wait until it is written."""
    topic = PipelineTopics.for_spec(PIPELINES[event.pipeline], settings.namespace).control
    producer = kafka_producer(settings)
    producer.produce(topic, key=event.pipeline.encode(), value=event.to_json())
    if producer.flush(timeout) != 0:
        raise TimeoutError(f"control event not delivered to {topic} in {timeout:.0f}s")


def promote(settings: Settings, registry: Registry, pipeline: str, version: int, *,
            reason: str = "manual", evidence: dict[str, Any] | None = None) -> ModelVersion:
    """Make ``version`` the champion and have the learner serve it."""
    mv = registry.promote(pipeline, version)
    _announce(settings, mv, reason, evidence or {})
    return mv


def rollback(settings: Settings, registry: Registry, pipeline: str) -> ModelVersion:
    """Serve the champion before the current one again."""
    mv = registry.rollback(pipeline)
    _announce(settings, mv, "rollback", {})
    return mv


def request_retrain(settings: Settings, pipeline: str, requested_by: str = "operator") -> None:
    """Ask the retrainer for a retrain now, whatever its cool-down. The retrainer admits
    ``retrain_requests_per_hour`` of them per pipeline in any hour and refuses more
    (``retrain_skipped``, reason ``rate_limited``, on the control topic): it decides, since
    anyone who can produce to the control topic can ask without this function."""
    send_control(settings, ControlEvent(kind="retrain_requested", pipeline=pipeline,
                                        at=time.time(), reason="manual",
                                        evidence={"requested_by": requested_by}))


def _announce(settings: Settings, mv: ModelVersion, reason: str,
              evidence: dict[str, Any]) -> None:
    send_control(settings, ControlEvent(kind="promoted", pipeline=mv.pipeline, at=time.time(),
                                        registry_version=mv.version, reason=reason,
                                        evidence=evidence))
