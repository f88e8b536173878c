"""The local stack's Milvus Lite runs as a server, so that two processes (the worker that
writes vectors and the API that searches them) share it by URI; its files allow one
opener only."""

from __future__ import annotations

import pytest

from driftline.adapters.vectors import blocking_client

pytestmark = pytest.mark.integration


def test_two_clients_share_the_stacks_milvus_by_uri(settings):
    collection = f"{settings.namespace.replace('-', '_')}_stack_check"
    writer, reader = blocking_client(settings), blocking_client(settings)
    try:
        writer.create_collection(collection, dimension=3, metric_type="L2")
        writer.insert(collection, [{"id": i, "vector": [float(i), 0.0, 0.0]}
                                   for i in range(20)])
        hits = reader.search(collection, data=[[4.2, 0.0, 0.0]], limit=2)[0]
        assert [h["id"] for h in hits] == [4, 5]
        writer.delete(collection, ids=[4])
        hits = reader.search(collection, data=[[4.2, 0.0, 0.0]], limit=2)[0]
        assert [h["id"] for h in hits] == [5, 3]
    finally:
        writer.drop_collection(collection)
        writer.close()
        reader.close()
