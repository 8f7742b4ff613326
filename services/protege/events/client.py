"""kafka-python client arguments from `Settings`: bootstrap, TLS and SASL pass-through.

The embedded broker needs none of this; a real cluster sets `PROTEGE_KAFKA_*`
and every producer, consumer and admin client here gets the same arguments.
"""

from __future__ import annotations

from typing import Any

from protege.settings import Settings


class EventLogNotConfigured(ValueError):
    """`kafka_bootstrap` is unset: start the embedded broker or point at a cluster."""


def client_config(settings: Settings) -> dict[str, Any]:
    """Arguments common to KafkaProducer, KafkaConsumer and KafkaAdminClient."""
    if not settings.kafka_bootstrap:
        raise EventLogNotConfigured(
            "PROTEGE_KAFKA_BOOTSTRAP is not set (run `protege broker` for a local one)"
        )
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()],
        "security_protocol": settings.kafka_security_protocol,
        "client_id": "protege",
    }
    if settings.kafka_sasl_mechanism:
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            config["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        config["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        for name in ("cafile", "certfile", "keyfile"):
            value = getattr(settings, f"kafka_ssl_{name}")
            if value is not None:
                config[f"ssl_{name}"] = str(value)
    config.update(settings.kafka_client_options)
    return config


def bootstrap_addresses(settings: Settings) -> list[tuple[str, int]]:
    """(host, port) pairs of the bootstrap servers, for a cheap reachability check."""
    addresses = []
    for server in client_config(settings)["bootstrap_servers"]:
        host, _, port = server.rpartition(":")
        addresses.append((host.strip("[]") or "localhost", int(port or 9092)))
    return addresses
