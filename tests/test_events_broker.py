"""The embedded Tansu broker and `protege broker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from protege.events.broker import EmbeddedBroker, kafka_responds
from protege.events.topics import ensure_topics


def test_embedded_broker_answers_kafka_and_restarts_on_the_same_port(tmp_path):
    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log")
    with broker:
        assert broker.running
        assert kafka_responds(broker.host, broker.port)
        port = broker.port
        broker.kill()
        assert not kafka_responds(broker.host, broker.port, timeout_s=0.2)
        broker.restart()
        assert broker.port == port and kafka_responds(broker.host, port)
    assert not broker.running
    assert not kafka_responds(broker.host, port, timeout_s=0.2)


def test_topics_are_created_once_with_the_configured_partitions(kafka_settings):
    created = ensure_topics(kafka_settings)
    assert created == [
        kafka_settings.kafka_topic_predictions,
        kafka_settings.kafka_topic_feedback,
        kafka_settings.kafka_topic_models,
    ]
    assert ensure_topics(kafka_settings) == []


BROKER_COMMAND = """
import argparse, sys
from protege.commands import broker
parser = argparse.ArgumentParser()
broker.register(parser.add_subparsers())
args = parser.parse_args(["broker"])
sys.exit(args.handler(args))
"""


def test_broker_command_prints_the_bootstrap_and_stops_on_ctrl_c():
    process = subprocess.Popen(
        [sys.executable, "-c", BROKER_COMMAND],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PROTEGE_HOME": os.environ.get("TMPDIR", "/tmp")},
    )
    try:
        bootstrap = process.stdout.readline().strip()
        host, _, port = bootstrap.rpartition(":")
        assert host == "127.0.0.1" and kafka_responds(host, int(port))
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        deadline = time.monotonic() + 5
        while kafka_responds(host, int(port), timeout_s=0.2):
            assert time.monotonic() < deadline, "broker outlived the command"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
