"""The Kafka clients every layer builds from one ``Settings``, and the connection settings
they all share: the brokers' address and the client's security (TLS, SASL).

:func:`client_config` is the librdkafka configuration common to every confluent-kafka
client (producer, consumer, admin client); :func:`faust_credentials` the same security for
Faust's aiokafka clients (``faust.App(broker_credentials=...)``). Both check the settings
first (:func:`kafka_security`): a protocol or mechanism that is not one Driftline passes
on, or credentials set beside a protocol that would not use them, is a ``ValueError``
naming the setting, at start-up rather than as a connection that fails (or succeeds
without authentication) later.

Producers are idempotent (a retried send is written once) and lz4-compressed with a short
linger: the settings the tools, the operator commands and the model lifecycle share.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import Producer

from driftline.adapters.config import Settings

if TYPE_CHECKING:  # Faust is the worker's: other processes never import it
    from faust.types.auth import CredentialsT

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """The checked security settings of a Kafka client."""

    protocol: str            # one of PROTOCOLS
    mechanism: str | None    # one of MECHANISMS with SASL_*, else None
    username: str | None
    password: str | None
    ca_file: str | None      # a PEM file of CA certificates with SSL/SASL_SSL; None: the system's

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The Kafka security settings, checked; ``ValueError`` naming the setting at fault.

    >>> kafka_security(Settings()).protocol
    'PLAINTEXT'
    >>> kafka_security(Settings(kafka_security_protocol="TLS"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: DRIFTLINE_KAFKA_SECURITY_PROTOCOL (kafka_security_protocol) is 'TLS'; ...
    """
    protocol = (settings.kafka_security_protocol or "PLAINTEXT").strip().upper()
    if protocol not in PROTOCOLS:
        raise ValueError(f"{_name('kafka_security_protocol')} is "
                         f"{settings.kafka_security_protocol!r}; it must be one of "
                         f"{', '.join(PROTOCOLS)}")
    mechanism = settings.kafka_sasl_mechanism.strip().upper() or None
    username = settings.kafka_sasl_username or None
    password = settings.kafka_sasl_password or None
    ca_file = settings.kafka_ca_file.strip() or None
    security = KafkaSecurity(protocol, mechanism, username, password, ca_file)
    if security.sasl:
        if mechanism not in MECHANISMS:
            raise ValueError(f"{_name('kafka_sasl_mechanism')} is "
                             f"{settings.kafka_sasl_mechanism!r}; with {protocol} it must be "
                             f"one of {', '.join(MECHANISMS)}")
        for field, value in (("kafka_sasl_username", username),
                             ("kafka_sasl_password", password)):
            if value is None:
                raise ValueError(f"{_name(field)} is empty; {protocol} needs it")
    else:
        # Credentials the protocol would not send: the operator meant SASL and would get
        # an unauthenticated connection.
        for field, value in (("kafka_sasl_mechanism", mechanism),
                             ("kafka_sasl_username", username),
                             ("kafka_sasl_password", password)):
            if value is not None:
                raise ValueError(f"{_name(field)} is set but "
                                 f"{_name('kafka_security_protocol')} is {protocol}, which "
                                 "does not use it: choose SASL_PLAINTEXT or SASL_SSL")
    if ca_file is not None:
        if not security.tls:
            raise ValueError(f"{_name('kafka_ca_file')} is set but "
                             f"{_name('kafka_security_protocol')} is {protocol}, which does "
                             "not use TLS: choose SSL or SASL_SSL")
        if not Path(ca_file).expanduser().is_file():
            raise ValueError(f"{_name('kafka_ca_file')} is {ca_file!r}, which is not a file")
    return security


def client_config(settings: Settings) -> dict[str, Any]:
    """The librdkafka configuration every confluent-kafka client starts from: the brokers'
    address and the security settings (the SASL and CA ones only when set). A client adds
    its own: ``Consumer({**client_config(settings), "group.id": ...})``.

    >>> client_config(Settings(kafka_bootstrap="k:9092"))
    {'bootstrap.servers': 'k:9092', 'security.protocol': 'PLAINTEXT'}
    """
    security = kafka_security(settings)
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap,
                              "security.protocol": security.protocol}
    if security.sasl:
        config.update({"sasl.mechanism": security.mechanism,
                       "sasl.username": security.username,
                       "sasl.password": security.password})
    if security.ca_file is not None:
        config["ssl.ca.location"] = str(Path(security.ca_file).expanduser())
    return config


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the same security as :func:`client_config`
    (None for PLAINTEXT, Faust's default). TLS verifies the brokers against the CA file,
    else the system's CA certificates."""
    security = kafka_security(settings)
    if security.protocol == "PLAINTEXT":
        return None
    import ssl

    from faust.auth import SASLCredentials, SSLCredentials

    context = None
    if security.tls:
        cafile = str(Path(security.ca_file).expanduser()) if security.ca_file else None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if not security.sasl:
        return SSLCredentials(context)
    # SASLCredentials is SASL_SSL exactly when given a context.
    return SASLCredentials(username=security.username, password=security.password,
                           mechanism=security.mechanism, ssl_context=context)


def kafka_producer(settings: Settings) -> Producer:
    return Producer({**client_config(settings), "linger.ms": 5, "enable.idempotence": True,
                     "compression.type": "lz4"})


def _name(field: str) -> str:
    return f"DRIFTLINE_{field.upper()} ({field})"
