"""The confluent-kafka clients every layer builds from one ``Settings``.

Producers are idempotent (a retried send is written once) and lz4-compressed with a short
linger: the settings the tools, the operator commands and the model lifecycle share.
"""

from __future__ import annotations

from confluent_kafka import Producer

from driftline.adapters.config import Settings


def kafka_producer(settings: Settings) -> Producer:
    return Producer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "linger.ms": 5,
        "enable.idempotence": True,
        "compression.type": "lz4",
    })
