"""The Redis password: written by `stack up` into <data dir>/secrets/ (0700, files 0600),
read by ``Settings.from_env()``, carried by the derived Redis URL."""

from __future__ import annotations

import hashlib
import os
import stat
from urllib.parse import unquote, urlsplit

import pytest
from redis.connection import parse_url

from driftline.adapters.config import REDIS_PASSWORD_FILE, Settings, read_secret, secret_path
from driftline.tools.host import ensure_secret
from driftline.tools.stack import LocalStack


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _write_password(data_dir, password: str) -> None:
    path = secret_path(data_dir, REDIS_PASSWORD_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(password + "\n")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """The process environment with no Redis settings, its data dir a fresh one."""
    for name in ("DRIFTLINE_REDIS_URL", "DRIFTLINE_REDIS_PASSWORD", "DRIFTLINE_REDIS_USERNAME",
                 "DRIFTLINE_REDIS_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DRIFTLINE_DATA_DIR", str(tmp_path))
    return tmp_path


def test_without_a_password_file_the_url_is_the_stack_s_without_a_password(clean_env):
    s = Settings.from_env()
    assert s.redis_password == ""
    assert s.redis_url == "redis://127.0.0.1:6379/0"


def test_the_process_environment_reads_the_password_file_into_the_url(clean_env):
    _write_password(clean_env, "s3cret-Token_x")
    s = Settings.from_env()
    assert s.redis_password == "s3cret-Token_x"
    assert s.redis_url == "redis://driftline:s3cret-Token_x@127.0.0.1:6379/0"


def test_the_user_and_port_are_in_the_url(clean_env, monkeypatch):
    _write_password(clean_env, "pw")
    monkeypatch.setenv("DRIFTLINE_REDIS_USERNAME", "app")
    monkeypatch.setenv("DRIFTLINE_REDIS_PORT", "6390")
    assert Settings.from_env().redis_url == "redis://app:pw@127.0.0.1:6390/0"


def test_a_given_mapping_reads_no_file_unless_asked(tmp_path):
    _write_password(tmp_path, "pw")
    env = {"DRIFTLINE_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(env).redis_url == "redis://127.0.0.1:6379/0"
    assert Settings.from_env(env, secrets=True).redis_url == "redis://driftline:pw@127.0.0.1:6379/0"


def test_the_password_is_quoted_in_the_url_and_parses_back(tmp_path):
    password = "p@ss:w/rd%?#&= x"
    _write_password(tmp_path, password)
    s = Settings.from_env({"DRIFTLINE_DATA_DIR": str(tmp_path)}, secrets=True)
    parts = urlsplit(s.redis_url)
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 6379, "/0")
    assert unquote(parts.password) == password
    # as redis-py reads it
    parsed = parse_url(s.redis_url)
    assert (parsed["username"], parsed["password"]) == ("driftline", password)


def test_an_explicit_url_wins_over_the_file(clean_env, monkeypatch):
    _write_password(clean_env, "pw")
    monkeypatch.setenv("DRIFTLINE_REDIS_URL", "redis://u:other@redis:6379/0")
    s = Settings.from_env()
    assert s.redis_url == "redis://u:other@redis:6379/0"


def test_an_explicit_password_wins_over_the_file(clean_env, monkeypatch):
    _write_password(clean_env, "from-file")
    monkeypatch.setenv("DRIFTLINE_REDIS_PASSWORD", "from-env")
    s = Settings.from_env()
    assert s.redis_password == "from-env"
    assert s.redis_url == "redis://driftline:from-env@127.0.0.1:6379/0"


def test_children_get_the_password_and_the_url(clean_env):
    _write_password(clean_env, "pw")
    s = Settings.from_env()
    env = s.to_env()
    assert env["DRIFTLINE_REDIS_PASSWORD"] == "pw"
    assert env["DRIFTLINE_REDIS_URL"] == s.redis_url
    assert Settings.from_env(env) == s


def test_overrides_keep_the_credentials_in_a_derived_url(tmp_path):
    s = Settings(data_dir=tmp_path, redis_password="pw")
    assert s.with_overrides(redis_port=7000).redis_url == "redis://driftline:pw@127.0.0.1:7000/0"
    assert s.with_overrides(redis_password="new").redis_url == (
        "redis://driftline:new@127.0.0.1:6379/0")


def test_secrets_are_written_once_private_and_url_safe(tmp_path):
    old = os.umask(0)  # a permissive umask must not widen them
    try:
        first = ensure_secret(tmp_path, "redis.password", lambda: "a" * 8)
        again = ensure_secret(tmp_path, "redis.password", lambda: "b" * 8)
    finally:
        os.umask(old)
    assert first == again == "a" * 8
    assert _mode(tmp_path / "secrets") == 0o700
    assert _mode(tmp_path / "secrets" / "redis.password") == 0o600
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["redis.password"]


def test_stack_secrets_are_private_and_the_acl_holds_only_a_hash(tmp_path):
    stack = LocalStack(Settings(data_dir=tmp_path), out=open(os.devnull, "w"))
    old = os.umask(0)
    try:
        stack.ensure_secrets()
        stack.redis_dir.mkdir(parents=True)
        acl = stack._write_redis_acl()
    finally:
        os.umask(old)
    secrets_dir = tmp_path / "secrets"
    assert _mode(secrets_dir) == 0o700
    assert {p.name for p in secrets_dir.iterdir()} >= {"redis.password", "model.key"}
    for path in secrets_dir.iterdir():
        assert _mode(path) == 0o600, path
    password = read_secret(tmp_path, REDIS_PASSWORD_FILE)
    assert len(password) >= 32
    assert password == parse_url(f"redis://u:{password}@h:1/0")["password"]  # URL-safe
    assert _mode(acl) == 0o600
    text = acl.read_text()
    assert password not in text
    assert text.splitlines() == [
        "user default off ~* &* +@all",  # off; its permissions are Redis's AOF replay's
        f"user driftline on #{hashlib.sha256(password.encode()).hexdigest()} ~* &* +@all"]
