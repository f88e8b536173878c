"""Redis refuses a client without the password (issue 15): the stack's Redis runs with an
ACL, its `default` user off, and the services authenticate as the one user that
``driftline stack up`` configures with the password of <data dir>/secrets/."""

from __future__ import annotations

import os
import socket
import stat
import uuid

import pytest
import redis

from driftline.adapters.config import REDIS_PASSWORD_FILE, Settings, secret_path
from driftline.tools.host import free_port
from driftline.tools.stack import LocalStack


@pytest.fixture(scope="module")
def stack_settings() -> Settings:
    LocalStack(Settings.from_env()).up()  # a no-op when the stack is up already
    # Read after `up`, which writes the password file when it is missing.
    return Settings.from_env()


def test_a_client_without_the_password_is_refused(stack_settings):
    client = redis.Redis(host="127.0.0.1", port=stack_settings.redis_port, socket_timeout=5)
    try:
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()
    # On the wire, whatever the client library sends first.
    with socket.create_connection(("127.0.0.1", stack_settings.redis_port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64).startswith(b"-NOAUTH")


def _refused(settings: Settings, username: str | None, password: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=settings.redis_port, username=username,
                         password=password, socket_timeout=5)
    try:
        with pytest.raises(redis.AuthenticationError):
            client.ping()
    finally:
        client.close()


def test_a_wrong_password_is_refused(stack_settings):
    _refused(stack_settings, stack_settings.redis_username, "wrong-" + uuid.uuid4().hex)


def test_the_password_does_not_open_the_default_user(stack_settings):
    _refused(stack_settings, None, stack_settings.redis_password)  # AUTH <password>
    _refused(stack_settings, "default", stack_settings.redis_password)


def test_the_settings_url_authenticates(stack_settings):
    assert stack_settings.redis_password, "stack up writes the Redis password"
    assert f"{stack_settings.redis_username}:" in stack_settings.redis_url
    client = redis.Redis.from_url(stack_settings.redis_url, socket_timeout=5)
    key = f"driftline:test-redis-auth:{uuid.uuid4().hex}"
    try:
        assert client.ping()
        assert client.acl_whoami() in (stack_settings.redis_username,
                                       stack_settings.redis_username.encode())
        client.set(key, b"1", ex=60)
        assert client.get(key) == b"1"
    finally:
        client.delete(key)
        client.close()


def test_the_password_file_is_private(stack_settings):
    path = secret_path(stack_settings.data_dir, REDIS_PASSWORD_FILE)
    assert stack_settings.redis_password == path.read_text().strip(), (
        "the password comes from DRIFTLINE_REDIS_PASSWORD, not the stack's file")
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_restart_replays_the_scripts_writes_under_the_acl(tmp_path):
    """Redis 7.0 replays its append-only file as the `default` user and drops the
    transactions (a Lua script's writes) that `default` may not run: off, it keeps its
    permissions. A Redis of its own, on a free port."""
    settings = Settings(data_dir=tmp_path, redis_port=free_port())
    stack = LocalStack(settings, out=open(os.devnull, "w"))
    stack.up(services=("redis",))
    try:
        s = Settings.from_env({"DRIFTLINE_DATA_DIR": str(tmp_path),
                               "DRIFTLINE_REDIS_PORT": str(settings.redis_port)}, secrets=True)
        client = redis.Redis.from_url(s.redis_url, socket_timeout=5)
        client.eval("redis.call('SET', KEYS[1], 'a'); redis.call('HSET', KEYS[2], 'f', 'b')",
                    2, "k1", "k2")
        with client.pipeline(transaction=True) as pipe:
            pipe.set("k3", "c").set("k4", "d").execute()
        client.close()
        stack.down(services=("redis",))
        stack.up(services=("redis",))
        client = redis.Redis.from_url(s.redis_url, socket_timeout=5)
        assert (client.get("k1"), client.hget("k2", "f"), client.get("k3"), client.get("k4")) \
            == (b"a", b"b", b"c", b"d")
        client.close()
        refused = redis.Redis(host="127.0.0.1", port=settings.redis_port, socket_timeout=5)
        with pytest.raises(redis.AuthenticationError):
            refused.ping()
        refused.close()
    finally:
        stack.down(services=("redis",))
