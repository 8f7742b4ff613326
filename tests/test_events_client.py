"""Kafka client settings: the embedded broker needs none, a real cluster gets them all."""

from __future__ import annotations

from protege.events.client import bootstrap_addresses, client_config
from protege.settings import Settings


def test_security_settings_pass_through_to_every_client(tmp_path):
    settings = Settings(
        home=tmp_path,
        kafka_bootstrap="kafka-0.example:9093, kafka-1.example:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="protege",
        kafka_sasl_password="s3cret",
        kafka_ssl_cafile=tmp_path / "ca.pem",
        kafka_client_options={"connections_max_idle_ms": 60000},
    )
    config = client_config(settings)
    assert config["bootstrap_servers"] == ["kafka-0.example:9093", "kafka-1.example:9093"]
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("protege", "s3cret")
    assert config["ssl_cafile"] == str(tmp_path / "ca.pem")
    assert config["connections_max_idle_ms"] == 60000
    assert bootstrap_addresses(settings) == [("kafka-0.example", 9093), ("kafka-1.example", 9093)]
    assert "s3cret" not in repr(settings)  # the password stays out of logs


def test_plaintext_needs_only_the_bootstrap(tmp_path):
    settings = Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:9092")
    assert client_config(settings) == {
        "bootstrap_servers": ["127.0.0.1:9092"],
        "security_protocol": "PLAINTEXT",
        "client_id": "protege",
    }
    assert settings.events_spool_dir == tmp_path / "spool"
