"""`protege events drain` (the Helm chart's preStop) against the embedded broker: it waits
for a live producer to replay its spool, replays a dead producer's slot itself when Kafka
settings are in its environment, leaves it on disk without them, and exits 0 at its
deadline when Kafka is away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from protege.events.broker import free_port
from protege.events.consumer import EventConsumer
from protege.events.producer import EventProducer
from protege.events.spool import Spool, spool_in_use, unsent_records
from protege.events.topics import ensure_topics
from protege.schemas import LabelProbability, ModelRef, PredictionEvent, Route


def prediction(n: int) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=f"drain.{n}.sig",
        task="youtube-spam",
        text=f"comment {n}",
        label="HAM",
        probabilities=[LabelProbability(label="HAM", probability=0.9)],
        route=Route.specialist,
        served_by=ModelRef(model="tfidf", version="1"),
        latency_ms=1.0,
    )


def dead_slot(spool_dir: Path, topic: str, events: list[PredictionEvent], slot: int = 3) -> Path:
    """What a process killed while Kafka was away leaves: a slot with events, no holder."""
    spool = Spool(spool_dir / f"producer-{slot}", max_bytes=1 << 20)
    for event in events:
        assert spool.append(topic, event.key.encode(), event.model_dump_json().encode())
    spool.close()
    return spool.directory


def kafka_env(settings) -> dict[str, str]:
    return {
        "PROTEGE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PROTEGE_KAFKA_TOPIC_PREDICTIONS": settings.kafka_topic_predictions,
        "PROTEGE_KAFKA_TOPIC_FEEDBACK": settings.kafka_topic_feedback,
        "PROTEGE_KAFKA_TOPIC_MODELS": settings.kafka_topic_models,
        "PROTEGE_KAFKA_ACK_TIMEOUT_S": "1",
    }


def drain_command(spool_dir: Path, timeout_s: float, env: dict[str, str], home: Path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("PROTEGE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "protege.cli", "events", "drain"]
        + ["--spool-dir", str(spool_dir), "--timeout-s", str(timeout_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, "PROTEGE_HOME": str(home), **env},
    )


def finished(process: subprocess.Popen, timeout_s: float) -> tuple[int, dict, float]:
    started = time.monotonic()
    out, err = process.communicate(timeout=timeout_s)
    assert "Traceback" not in err, err
    return process.returncode, json.loads(out.strip().splitlines()[-1]), time.monotonic() - started


def test_drain_waits_for_a_live_producer_to_replay_its_spool(kafka_broker, kafka_settings):
    spool_dir = kafka_settings.events_spool_dir
    kafka_broker.stop()
    producer = EventProducer(kafka_settings).start()
    try:
        for n in range(5):
            producer.publish(prediction(n))
        deadline = time.monotonic() + 30
        while producer.stats()["spool_pending"] < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        (slot,) = Path(spool_dir).glob("producer-*")
        assert spool_in_use(slot) and unsent_records(slot) == 5

        # No Kafka settings: the drain only watches; the live producer is the one to send.
        drain = drain_command(spool_dir, 60, {}, kafka_settings.home)
        time.sleep(3)
        assert drain.poll() is None, "drained while a live producer still held events"
        kafka_broker.start()
        rc, report, _ = finished(drain, 60)
        assert rc == 0 and report["drained"] is True and report["left"] == {}
        assert report["replayed"] is False
        assert producer.stats()["replayed"] == 5 and unsent_records(slot) == 0
    finally:
        kafka_broker.start()
        producer.close(timeout=5)


def test_drain_replays_a_dead_producers_slot_when_kafka_is_configured(kafka_settings, tmp_path):
    ensure_topics(kafka_settings)
    spool_dir = tmp_path / "spool"
    events = [prediction(n) for n in range(3)]
    slot = dead_slot(spool_dir, kafka_settings.kafka_topic_predictions, events)

    rc, report, _ = finished(drain_command(spool_dir, 60, kafka_env(kafka_settings), tmp_path), 90)
    assert rc == 0 and report["drained"] is True and report["replayed"] is True
    assert report["left"] == {} and unsent_records(slot) == 0

    consumer = EventConsumer(
        kafka_settings, group_id="drain-test", topics=[kafka_settings.kafka_topic_predictions]
    )
    try:
        got, deadline = [], time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            got += consumer.poll(timeout_s=1.0)
    finally:
        consumer.close()
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in events)


def test_a_dead_slot_is_left_without_kafka_and_kafka_away_is_never_a_failure(tmp_path):
    spool_dir = tmp_path / "spool"
    slot = dead_slot(spool_dir, "t.predictions", [prediction(n) for n in range(4)])

    # Without Kafka settings there is nothing to wait for: at once, the events left on disk.
    rc, report, seconds = finished(drain_command(spool_dir, 60, {}, tmp_path), 60)
    assert rc == 0 and report["drained"] is True and report["replayed"] is False
    assert report["left"] == {slot.name: 4} and seconds < 30

    # Kafka configured but nobody listening: the deadline, exit 0, nothing lost.
    away = {
        "PROTEGE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "PROTEGE_KAFKA_ACK_TIMEOUT_S": "1",
    }
    rc, report, seconds = finished(drain_command(spool_dir, 4, away, tmp_path), 60)
    assert rc == 0 and report["drained"] is False and report["replayed"] is True
    assert sum(report["left"].values()) == 4
    assert 4 <= seconds < 4 + 10
    assert sum(unsent_records(s) for s in spool_dir.glob("producer-*")) == 4
