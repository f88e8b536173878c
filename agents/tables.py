"""Faust tables made cheaper on the hot path: reads from memory, writes in batches.

A Faust table write sends its changelog record with Faust's producer (a future, a buffer
task and aiokafka's Python accumulator for each) and goes through the managed dict, the
serializing store and the changelog hook; the profile of a worker under a backlog put
these among its largest costs. :class:`CachedTable` keeps values in memory and writes
each batch's changes once: to the partition's RocksDB in one write batch, and to the
changelog, with the same bytes and partition Faust would use, through
:class:`~agents.outputs.Outputs`, which every agent flushes before its batch is
acknowledged: a changelog record is delivered before the offset of the record that made
it can be committed, as Faust's own flush before a commit ensures for its producer.

What is left out: Faust records, in each table partition's RocksDB, the changelog offset
its data reflects, from its producer's acknowledgement. Without it, a worker restarted
after a clean stop reads the whole changelog again (the data is the same; the start is
slower). After a crash the local state is discarded anyway
(:func:`agents.faust_fixes.discard_state_after_crash`).
"""

from __future__ import annotations

from typing import Any

from cachetools import LRUCache
from faust.serializers.codecs import get_codec
from rocksdict import WriteBatch

from agents.faust_fixes import as_current_event
from agents.outputs import Outputs


class CachedTable:
    """A Faust table read through an LRU cache of ``size`` entries, written behind.

    Writes land in memory and in a buffer that :meth:`flush` writes, before the batch
    that made them is acknowledged: one RocksDB write batch per partition and one
    changelog record per key, whatever the number of writes to it meanwhile (a pending
    join entry set and deleted in one batch costs a tombstone). Faust's own table write
    went through five layers per key (the managed dict, the serializing store, the
    changelog hook, a delete tried in every partition's database), which a worker's
    profile put at a fifth of its time. Each access names the record it is made for: the
    table's partition is the record's, as Faust takes it from the stream's current event.
    """

    def __init__(self, table: Any, size: int, outputs: Outputs) -> None:
        self.table = table
        self.outputs = outputs
        self._cache: LRUCache = LRUCache(maxsize=size)
        self._dirty: dict[str, tuple[int, Any]] = {}  # key -> (partition, value or None)
        # The codecs Faust's store and changelog use for this table (resolved once: Faust
        # resolves them per key, a twentieth of the worker's time in its profile).
        registry = table.app.serializers
        self._dump_key = get_codec(table.key_serializer or registry.key_serializer).dumps
        self._dump_value = get_codec(table.value_serializer or registry.value_serializer).dumps

    def get(self, key: str, record: Any) -> Any:
        written = self._dirty.get(key)
        if written is not None:
            return written[1]
        try:
            return self._cache[key]
        except KeyError:
            pass
        with as_current_event(record):
            value = self.table.get(key)
        self._cache[key] = value
        return value

    def set(self, key: str, value: Any, record: Any) -> None:
        self._dirty[key] = (record.message.partition, value)
        self._cache[key] = value

    def delete(self, key: str, record: Any) -> None:
        self._dirty[key] = (record.message.partition, None)
        self._cache[key] = None

    def flush(self) -> None:
        """Write what was set or deleted since the last flush to RocksDB and the
        changelog (through the outputs, flushed by the caller before it acknowledges)."""
        if not self._dirty:
            return
        store = self.table.data  # Faust's RocksDB store
        topic = self.table.changelog_topic.get_topic_name()
        batches: dict[int, Any] = {}
        for key, (partition, value) in self._dirty.items():
            raw_key = self._dump_key(key)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = WriteBatch(raw_mode=True)
            if value is None:
                raw_value = None
                batch.delete(raw_key)
            else:
                raw_value = self._dump_value(value)
                batch.put(raw_key, raw_value)
                store._key_index[raw_key] = partition  # where Faust's own reads look
            self.outputs.send(topic, raw_key, raw_value, partition)
        for partition, batch in batches.items():
            store._db_for_partition(partition).write(batch)
        self._dirty.clear()

    def clear(self) -> None:
        """Forget every value read (partitions moved: another worker may write them).
        Writes not yet flushed stay: the batch that made them, in flight during the
        rebalance, flushes them before it is acknowledged, as it wrote them to Faust's
        table before (dropping them lost joins when a second worker joined the group)."""
        self._cache.clear()
