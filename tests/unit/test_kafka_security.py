"""The Kafka security settings reach every client: the confluent-kafka configuration
(:func:`client_config`) and Faust's broker credentials (:func:`faust_credentials`)."""

from __future__ import annotations

import ssl

import pytest
from confluent_kafka import Producer
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from driftline.adapters import kafka_admin, kafka_clients
from driftline.adapters.config import Settings
from driftline.adapters.kafka_clients import (
    client_config,
    faust_credentials,
    kafka_producer,
    kafka_security,
)

SASL = {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "worker", "kafka_sasl_password": "s3cret"}


@pytest.fixture
def ca_file(tmp_path):
    """A real CA certificate: Python's SSL context parses the file."""
    import certifi

    path = tmp_path / "ca.pem"
    path.write_text(open(certifi.where()).read())
    return str(path)


def test_plaintext_by_default_adds_nothing_but_the_protocol():
    config = client_config(Settings(kafka_bootstrap="broker:9092"))
    assert config == {"bootstrap.servers": "broker:9092", "security.protocol": "PLAINTEXT"}
    assert faust_credentials(Settings()) is None  # Faust's own default: PLAINTEXT
    assert credentials_to_aiokafka_auth(faust_credentials(Settings())) == {
        "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_with_a_ca_file_reaches_the_confluent_clients(ca_file):
    s = Settings(kafka_bootstrap="broker:9093", kafka_ca_file=ca_file, **SASL)
    assert client_config(s) == {
        "bootstrap.servers": "broker:9093", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "worker",
        "sasl.password": "s3cret", "ssl.ca.location": ca_file}
    # librdkafka (this build) accepts it; quiet: nothing listens there.
    Producer({**client_config(s), "log_level": 0})


def test_the_same_security_reaches_faust(ca_file):
    creds = faust_credentials(Settings(kafka_ca_file=ca_file, **SASL))
    assert isinstance(creds, SASLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("worker", "s3cret")
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED

    plain = faust_credentials(Settings(**{**SASL, "kafka_security_protocol": "sasl_plaintext",
                                          "kafka_sasl_mechanism": "plain"}))
    auth = credentials_to_aiokafka_auth(plain)
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == ("SASL_PLAINTEXT", "PLAIN")
    assert auth["ssl_context"] is None

    tls = faust_credentials(Settings(kafka_security_protocol="SSL", kafka_ca_file=ca_file))
    assert isinstance(tls, SSLCredentials)
    assert credentials_to_aiokafka_auth(tls)["security_protocol"] == "SSL"
    # TLS without a CA file verifies against the system's certificates.
    assert faust_credentials(Settings(kafka_security_protocol="SSL")).context.verify_mode \
        == ssl.CERT_REQUIRED
    assert client_config(Settings(kafka_security_protocol="SSL"))["security.protocol"] == "SSL"


def test_every_client_is_built_on_the_common_configuration(monkeypatch):
    built = []
    monkeypatch.setattr(kafka_clients, "Producer", built.append)
    monkeypatch.setattr(kafka_admin, "AdminClient", lambda config: built.append(config) or
                        object())
    kafka_admin._admin.cache_clear()
    s = Settings(kafka_bootstrap="broker:9092", **{**SASL, "kafka_security_protocol":
                                                   "SASL_PLAINTEXT"})
    kafka_producer(s)
    kafka_admin.admin(s)
    common = client_config(s)
    assert [{k: c[k] for k in common} for c in built] == [common, common]
    assert built[0]["enable.idempotence"] is True
    kafka_admin._admin.cache_clear()


def test_the_admin_client_is_kept_per_security_setting(monkeypatch):
    monkeypatch.setattr(kafka_admin, "AdminClient", lambda config: object())
    kafka_admin._admin.cache_clear()
    plain = kafka_admin.admin(Settings(kafka_bootstrap="broker:9092"))
    assert kafka_admin.admin(Settings(kafka_bootstrap="broker:9092")) is plain
    other = Settings(kafka_bootstrap="broker:9092", **{**SASL,
                                                       "kafka_security_protocol": "SASL_PLAINTEXT"})
    assert kafka_admin.admin(other) is not plain
    kafka_admin._admin.cache_clear()  # no fake left for the next test


@pytest.mark.parametrize(("changes", "setting"), [
    ({"kafka_security_protocol": "TLS"}, "DRIFTLINE_KAFKA_SECURITY_PROTOCOL"),
    ({**SASL, "kafka_sasl_mechanism": "GSSAPI"}, "DRIFTLINE_KAFKA_SASL_MECHANISM"),
    ({**SASL, "kafka_sasl_mechanism": ""}, "DRIFTLINE_KAFKA_SASL_MECHANISM"),
    ({**SASL, "kafka_sasl_username": ""}, "DRIFTLINE_KAFKA_SASL_USERNAME"),
    ({**SASL, "kafka_sasl_password": ""}, "DRIFTLINE_KAFKA_SASL_PASSWORD"),
    # Credentials the protocol would not send: an unauthenticated connection by mistake.
    ({"kafka_sasl_username": "worker"}, "DRIFTLINE_KAFKA_SASL_USERNAME"),
    ({"kafka_sasl_mechanism": "PLAIN"}, "DRIFTLINE_KAFKA_SASL_MECHANISM"),
    ({"kafka_ca_file": "/etc/hostname"}, "DRIFTLINE_KAFKA_CA_FILE"),
    ({"kafka_security_protocol": "SSL", "kafka_ca_file": "/nonexistent/ca.pem"},
     "DRIFTLINE_KAFKA_CA_FILE"),
])
def test_invalid_settings_are_refused_naming_the_setting(changes, setting):
    s = Settings(**changes)
    for build in (kafka_security, client_config, faust_credentials):
        with pytest.raises(ValueError, match=setting):
            build(s)


def test_settings_come_from_the_environment():
    s = Settings.from_env({"DRIFTLINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "DRIFTLINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
                           "DRIFTLINE_KAFKA_SASL_USERNAME": "u",
                           "DRIFTLINE_KAFKA_SASL_PASSWORD": "p"})
    assert kafka_security(s).mechanism == "SCRAM-SHA-256"
    assert client_config(s)["sasl.username"] == "u"


def test_faust_takes_the_credentials_as_its_broker_credentials(ca_file):
    import faust

    s = Settings(kafka_ca_file=ca_file, **SASL)
    app = faust.App("security-unit", broker=f"kafka://{s.kafka_bootstrap}", store="memory://",
                    broker_credentials=faust_credentials(s))
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    assert (auth["security_protocol"], auth["sasl_plain_username"]) == ("SASL_SSL", "worker")
