"""A deployment namespace used for a while and then removed: a test's, a benchmark's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from driftline.adapters.config import Settings
from driftline.adapters.kafka_admin import delete_namespace_topics
from driftline.adapters.stores import delete_namespace_keys
from driftline.adapters.vectors import drop_namespace_collections


@contextlib.contextmanager
def scratch_namespace(settings: Settings, namespace: str, **overrides: object
                      ) -> Iterator[Settings]:
    """``settings`` in ``namespace`` (with ``overrides``); its topics, Redis keys and
    Milvus collections are deleted when the block ends, however it ends."""
    scoped = settings.with_overrides(namespace=namespace, **overrides)
    try:
        yield scoped
    finally:
        remove_namespace(scoped)


def remove_namespace(settings: Settings) -> None:
    """Delete the topics, Redis keys and Milvus collections of ``settings.namespace``."""
    delete_namespace_topics(settings)
    delete_namespace_keys(settings)
    drop_namespace_collections(settings)
