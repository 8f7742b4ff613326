"""EventConsumer: commits after the handler, skips redeliveries, tolerates unknown records."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaProducer

from protege.events.consumer import EventConsumer
from protege.events.producer import EventProducer
from protege.events.topics import ensure_topics
from protege.schemas import FeedbackEvent, Verdict


def feedback(i: int) -> FeedbackEvent:
    return FeedbackEvent(
        prediction_id=f"pred-{i}", task="youtube-spam", verdict=Verdict.up, reviewer="ana"
    )


def publish(settings, events) -> None:
    with EventProducer(settings) as producer:
        for event in events:
            producer.publish(event)
        assert producer.flush(timeout=15)


def consume_until(consumer: EventConsumer, handler, done, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out consuming"
        consumer.process(handler, timeout_s=0.5)


def test_a_redelivered_event_id_is_handed_over_once(kafka_settings):
    once, other = feedback(1), feedback(2)
    publish(kafka_settings, [once, once, other, once])  # the same event_id three times
    topics = [kafka_settings.kafka_topic_feedback]
    handled = []
    with EventConsumer(kafka_settings, "dedupe", topics=topics) as consumer:
        consume_until(consumer, handled.extend, lambda: consumer.stats()["records"] >= 4)
        assert sorted(e.event_id for e in handled) == sorted([once.event_id, other.event_id])
        assert consumer.stats()["duplicates"] == 2


def test_a_failing_handler_commits_nothing_and_sees_the_batch_again(kafka_settings):
    events = [feedback(i) for i in range(20)]
    publish(kafka_settings, events)
    topics = [kafka_settings.kafka_topic_feedback]
    attempts: list[list[str]] = []

    def flaky(batch) -> None:
        attempts.append([e.event_id for e in batch])
        if len(attempts) == 1:
            raise RuntimeError("store unavailable")

    with EventConsumer(kafka_settings, "flaky", topics=topics) as consumer:
        deadline = time.monotonic() + 20
        while not attempts:
            assert time.monotonic() < deadline
            try:
                consumer.process(flaky, timeout_s=0.5)
            except RuntimeError:
                pass
        handled = {i for batch in attempts[1:] for i in batch}
        consume_until(
            consumer,
            lambda batch: (flaky(batch), handled.update(e.event_id for e in batch)),
            lambda: len(handled) >= 20,
        )
    assert set(attempts[0]) <= set(attempts[1]) | handled  # the failed batch came back
    assert handled == {e.event_id for e in events}


def test_restarting_the_consumer_group_mid_stream_loses_nothing(kafka_settings):
    events = [feedback(i) for i in range(200)]
    publish(kafka_settings, events)
    topics = [kafka_settings.kafka_topic_feedback]
    committed: list[str] = []

    first = EventConsumer(kafka_settings, "improver", topics=topics, max_records=30)
    consume_until(
        first, lambda b: committed.extend(e.event_id for e in b), lambda: len(committed) >= 60
    )
    uncommitted = first.poll(timeout_s=5)  # taken, then the process dies before committing
    assert uncommitted
    first.close()

    redelivered: list[str] = []
    with EventConsumer(kafka_settings, "improver", topics=topics, max_records=30) as second:
        consume_until(
            second,
            lambda b: redelivered.extend(e.event_id for e in b),
            lambda: set(committed) | set(redelivered) >= {e.event_id for e in events},
            timeout_s=30,
        )
    assert {e.event_id for e in uncommitted} <= set(redelivered)  # came back, not lost
    assert not set(committed) & set(redelivered)  # committed work is not handed out again
    assert len(set(committed) | set(redelivered)) == 200


def test_unknown_schema_versions_and_kinds_are_skipped_and_counted(kafka_settings):
    ensure_topics(kafka_settings)
    topic = kafka_settings.kafka_topic_feedback
    good = feedback(7)
    future = {**json.loads(good.model_dump_json()), "schema_version": 99, "event_id": "v99"}
    strange = {**json.loads(good.model_dump_json()), "kind": "mystery", "event_id": "k1"}
    raw = KafkaProducer(bootstrap_servers=kafka_settings.kafka_bootstrap)
    for value in (
        json.dumps(future).encode(),
        json.dumps(strange).encode(),
        b"not json",
        good.model_dump_json().encode(),
    ):
        raw.send(topic, key=b"pred-7", value=value)
    raw.flush()
    raw.close()

    handled = []
    with EventConsumer(kafka_settings, "tolerant", topics=[topic]) as consumer:
        consume_until(consumer, handled.extend, lambda: consumer.stats()["records"] >= 4)
        stats = consumer.stats()
    assert [e.event_id for e in handled] == [good.event_id]
    assert stats["skipped"] == 2 and stats["invalid"] == 1


def test_consumer_without_bootstrap_says_how_to_get_one(tmp_path):
    from protege.events.client import EventLogNotConfigured
    from protege.settings import Settings

    with pytest.raises(EventLogNotConfigured, match="protege broker"):
        EventConsumer(Settings(home=tmp_path, kafka_bootstrap=None), "g")
