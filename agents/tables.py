"""Faust tables made cheaper on the hot path: changelogs through the worker's outputs
(librdkafka), and reads from memory.

**Changelogs.**
A Faust table write sends its changelog record with Faust's producer: a future, a buffer
task and aiokafka's Python accumulator for each one, which the profile of a worker under
a backlog showed among its largest costs. :func:`changelog_through` makes a table send
the same bytes, to the same partition, through :class:`~agents.outputs.Outputs`, which
every agent flushes before its batch is acknowledged: a changelog record is delivered
before the offset of the record that made it can be committed, as Faust's own flush
before a commit ensures for its producer.

What is left out: Faust records, in each table partition's RocksDB, the changelog offset
its data reflects, from the producer's acknowledgement. Without it, a worker restarted
after a clean stop reads the whole changelog again (the data is the same; the start is
slower). After a crash the local state is discarded anyway
(:func:`agents.faust_fixes.discard_state_after_crash`).

**Reads.** A table read decodes the value from RocksDB each time; :class:`CachedTable`
keeps the values it read or wrote, so an entity's state is decoded once per process,
not once per batch. The cache is emptied whenever partitions move (another worker may
have written them meanwhile).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from cachetools import LRUCache

from agents.faust_fixes import as_current_event
from agents.outputs import Outputs


def changelog_through(table: Any, outputs: Outputs) -> None:
    """Send ``table``'s changelog records through ``outputs``."""
    topic = table.changelog_topic.get_topic_name()
    serializers = table.app.serializers

    def send_changelog(partition: int, key: Any, value: Any, key_serializer: Any = None,
                       value_serializer: Any = None) -> Any:
        raw_key = serializers.dumps_key(table.key_type, key,
                                        serializer=key_serializer or table.key_serializer)
        raw_value = None if value is None else serializers.dumps_value(
            table.value_type, value, serializer=value_serializer or table.value_serializer)
        outputs.send(topic, raw_key, raw_value, partition)
        # What Faust's table reads of the future it expects: the message's partition.
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    table.send_changelog = send_changelog


class CachedTable:
    """A Faust table read through an LRU cache of ``size`` entries; writes go through
    both. Each access names the record it is made for: the table's partition is the
    record's (as Faust's own table access takes it from the stream's current event)."""

    def __init__(self, table: Any, size: int) -> None:
        self.table = table
        self._cache: LRUCache = LRUCache(maxsize=size)

    def get(self, key: str, record: Any) -> Any:
        try:
            return self._cache[key]
        except KeyError:
            pass
        with as_current_event(record):
            value = self.table.get(key)
        self._cache[key] = value
        return value

    def set(self, key: str, value: Any, record: Any) -> None:
        with as_current_event(record):
            self.table[key] = value
        self._cache[key] = value

    def delete(self, key: str, record: Any) -> None:
        with as_current_event(record):
            del self.table[key]
        self._cache[key] = None

    def clear(self) -> None:
        """Forget every cached value (partitions moved)."""
        self._cache.clear()
