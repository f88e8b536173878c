"""A deployment namespace used for a while and then removed: a test's, a benchmark's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from driftline.config import Settings
from driftline.kafka_admin import delete_namespace_topics
from driftline.stores import delete_namespace_keys


@contextlib.contextmanager
def scratch_namespace(settings: Settings, namespace: str, **overrides: object
                      ) -> Iterator[Settings]:
    """``settings`` in ``namespace`` (with ``overrides``); its topics and Redis keys are
    deleted when the block ends, however it ends."""
    s = settings.with_overrides(namespace=namespace, **overrides)
    try:
        yield s
    finally:
        delete_namespace_topics(s)
        delete_namespace_keys(s)
