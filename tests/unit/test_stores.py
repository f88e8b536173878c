"""The Redis client's packing: the bytes redis-py's own encoder and packer would send."""

import pytest
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer
from redis.exceptions import DataError

from driftline.adapters.stores import _HiredisPacker

REDIS_PY = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)


@pytest.mark.parametrize("args", [
    ("HSET", "k", "amount", repr(12.5), "_state", b'{"a":1}', "_event_time", 1.5),
    ("SET", "caf\u00e9", 2**70), ("CONFIG GET", "maxmemory"), (b"CONFIG GET", b"x"),
    ("SET", "k", memoryview(b"mv")), ("SET", "k", bytearray(b"ba")),
    ("SET", "k", float("nan")), ("SET", "k", -0.1),
])
def test_commands_are_packed_as_redis_py_packs_them(args):
    assert b"".join(_HiredisPacker().pack(*args)) == b"".join(REDIS_PY.pack(*args))


@pytest.mark.parametrize("bad", [None, True, object()])
def test_an_argument_redis_py_refuses_is_refused_too(bad):
    with pytest.raises(DataError):
        REDIS_PY.pack("SET", "k", bad)
    with pytest.raises(DataError):
        _HiredisPacker().pack("SET", "k", bad)
