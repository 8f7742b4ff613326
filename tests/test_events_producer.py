"""EventProducer against the real embedded broker: never blocks, never loses."""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaConsumer, TopicPartition

from protege.events.broker import free_port
from protege.events.consumer import EventConsumer, parse_event
from protege.events.producer import EventProducer
from protege.schemas import (
    FeedbackEvent,
    LabelProbability,
    ModelAction,
    ModelEvent,
    ModelOutput,
    ModelRef,
    PredictionEvent,
    Route,
    Verdict,
)
from protege.settings import Settings

SPECIALIST = ModelRef(model="tfidf-lr", version="3")
FOUNDATION = ModelRef(model="smollm2-135m", version="1")


def prediction(i: int, key: str | None = None) -> PredictionEvent:
    probabilities = [
        LabelProbability(label="SPAM", probability=0.7),
        LabelProbability(label="HAM", probability=0.3),
    ]
    return PredictionEvent(
        prediction_id=key or f"pred-{i}",
        task="youtube-spam",
        text=f"subscribe to my channel #{i}",
        label="SPAM",
        probabilities=probabilities,
        route=Route.escalated,
        served_by=FOUNDATION,
        specialist=ModelOutput(model=SPECIALIST, label="HAM", probabilities=probabilities[::-1]),
        foundation=ModelOutput(model=FOUNDATION, label="SPAM", probabilities=probabilities),
        latency_ms=12.5,
    )


def feedback(prediction_id: str) -> FeedbackEvent:
    return FeedbackEvent(
        prediction_id=prediction_id,
        task="youtube-spam",
        verdict=Verdict.down,
        label="HAM",
        reviewer="ana",
        comment="a fan, not spam",
    )


def wait_until(condition, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def read_all(settings: Settings, topics: list[str], expected: int, timeout_s: float = 20.0):
    """Every record of `topics`, read without a group (no join delay), until `expected` or quiet."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    partitions = [
        TopicPartition(topic, p) for topic in topics for p in consumer.partitions_for_topic(topic)
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records = []
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    try:
        while time.monotonic() < deadline:
            batch = [r for rs in consumer.poll(timeout_ms=200).values() for r in rs]
            records.extend(batch)
            if batch:
                quiet_since = None
            elif len(records) >= expected:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.5:  # nothing beyond the expected
                    break
    finally:
        consumer.close()
    return records


def test_every_event_kind_round_trips_on_its_topic_keyed_by_prediction(kafka_settings):
    predictions = [prediction(i) for i in range(30)]
    feedbacks = [feedback(p.prediction_id) for p in predictions[:10]]
    models = [
        ModelEvent(
            task="youtube-spam",
            model=SPECIALIST,
            action=ModelAction.promoted,
            metrics={"accuracy": 0.91, "champion_accuracy": 0.88},
            reasons=["beat by 0.03"],
        ),
    ]
    with EventProducer(kafka_settings) as producer:
        for event in [*predictions, *feedbacks, *models]:
            producer.publish(event)
        assert producer.flush(timeout=15)
        assert producer.stats()["produced"] == 41

    s = kafka_settings
    records = read_all(
        s, [s.kafka_topic_predictions, s.kafka_topic_feedback, s.kafka_topic_models], 41
    )
    assert len(records) == 41
    by_topic = {}
    for record in records:
        by_topic.setdefault(record.topic, []).append(record)
    sent = {e.event_id: e for e in [*predictions, *feedbacks, *models]}
    for record in records:
        event = parse_event(record.value)
        assert event == sent[event.event_id]  # every field survives the trip
        assert record.key == event.key.encode()
    assert {parse_event(r.value).kind for r in by_topic[s.kafka_topic_predictions]} == {
        "prediction"
    }
    assert {parse_event(r.value).kind for r in by_topic[s.kafka_topic_feedback]} == {"feedback"}
    assert {parse_event(r.value).kind for r in by_topic[s.kafka_topic_models]} == {"model"}
    # A prediction and its feedback share a key, hence a partition number.
    partition_of = {r.key: r.partition for r in by_topic[s.kafka_topic_predictions]}
    for record in by_topic[s.kafka_topic_feedback]:
        assert record.partition == partition_of[record.key]


def test_publish_never_blocks_while_the_broker_is_killed_mid_stream(kafka_broker, kafka_settings):
    producer = EventProducer(kafka_settings).start()
    published: list[str] = []
    latencies: list[float] = []
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            event = prediction(i)
            started = time.perf_counter()
            producer.publish(event)
            latencies.append(time.perf_counter() - started)
            published.append(event.event_id)
            i += 1
            time.sleep(0.002)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        wait_until(lambda: producer.counters.produced >= 100, what="first events acknowledged")
        kafka_broker.kill()
        killed_at = len(published)
        # The outage lasts past the ack timeout, so in-flight and new events go to disk.
        wait_until(lambda: producer.counters.spooled >= 200, what="events spooled")
        kafka_broker.start()  # memory storage: back empty, without the producer's session
        back_at = len(published)
        wait_until(lambda: len(published) >= back_at + 150, what="publishing after the restart")
    finally:
        stop.set()
        thread.join()
    assert producer.flush(timeout=30)
    stats = producer.stats()
    producer.close()

    # Waiting on Kafka would take the 1 s ack timeout at least; the margin under it is
    # for a starved 2-core CI machine, where even a dict lookup can wait 100+ ms.
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.001
    assert latencies[int(len(latencies) * 0.99)] < 0.05
    assert latencies[-1] < 0.5, f"a publish took {latencies[-1] * 1e3:.1f} ms"
    assert stats["dropped"] == 0 and stats["rejected"] == 0
    assert stats["spooled"] == stats["replayed"] >= 200

    s = kafka_settings
    records = read_all(s, [s.kafka_topic_predictions], len(published) - killed_at)
    on_restarted = {parse_event(r.value).event_id for r in records}
    # Everything published from the kill on is on the restarted broker...
    assert set(published[killed_at:]) <= on_restarted
    # ...and whatever is not there was acknowledged by the first broker, which forgot it.
    acked_by_first = stats["produced"] - len(records)
    missing = set(published) - on_restarted
    assert missing <= set(published[:killed_at])
    assert len(missing) <= acked_by_first


def test_producer_is_recreated_after_a_broker_restart_while_idle(kafka_broker, kafka_settings):
    with EventProducer(kafka_settings) as producer:
        for i in range(20):
            producer.publish(prediction(i))
        assert producer.flush(timeout=15)
        kafka_broker.restart()  # forgets topics and the idempotent producer's session
        after = [prediction(i) for i in range(20, 40)]
        for event in after:
            producer.publish(event)
        assert producer.flush(timeout=20)
        assert producer.stats()["dropped"] == 0
    records = read_all(kafka_settings, [kafka_settings.kafka_topic_predictions], 20)
    assert {parse_event(r.value).event_id for r in records} == {e.event_id for e in after}


def test_spooled_events_survive_a_producer_restart_while_the_broker_is_down(
    kafka_broker, kafka_settings
):
    kafka_broker.stop()
    keys = [f"pred-{i % 4}" for i in range(60)]
    events = [prediction(i, key=key) for i, key in enumerate(keys)]
    # Two replicas on one machine share the spool directory, each in a slot of its own.
    first, sibling = EventProducer(kafka_settings), EventProducer(kafka_settings)
    for event in events[:40]:
        first.publish(event)
    for event in events[40:]:
        sibling.publish(event)
    assert first.close(timeout=1) is False  # nothing could be delivered
    assert sibling.close(timeout=1) is False
    assert first.stats()["spooled"] + sibling.stats()["spooled"] == 60

    restarted = EventProducer(kafka_settings)  # one new process; it adopts the other slot too
    assert restarted.stats()["spool_pending"] == 40
    kafka_broker.start()
    restarted.start()
    assert restarted.flush(timeout=20)
    assert restarted.stats()["replayed"] == 60
    restarted.close()

    records = read_all(kafka_settings, [kafka_settings.kafka_topic_predictions], 60)
    received = [parse_event(r.value) for r in records]
    assert sorted(e.event_id for e in received) == sorted(e.event_id for e in events)
    for key in set(keys):  # replay keeps each key's order within a process's spool
        sent_by_first = [e.event_id for e in events[:40] if e.key == key]
        assert [e.event_id for e in received if e.key == key and e.event_id in sent_by_first] == (
            sent_by_first
        )


def test_a_full_queue_overflows_to_the_spool_not_onto_the_caller(kafka_settings):
    settings = kafka_settings.model_copy(update={"events_queue_size": 1})
    events = [prediction(i) for i in range(300)]
    with EventProducer(settings) as producer:
        for event in events:
            producer.publish(event)
        assert producer.flush(timeout=20)
        stats = producer.stats()
    assert stats["spooled"] > 0 and stats["spooled"] == stats["replayed"]
    assert stats["dropped"] == 0
    records = read_all(settings, [settings.kafka_topic_predictions], 300)
    assert {parse_event(r.value).event_id for r in records} == {e.event_id for e in events}


def test_events_are_dropped_only_when_the_spool_budget_runs_out(tmp_path, caplog):
    settings = Settings(
        home=tmp_path,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",  # nobody listens
        events_spool_max_bytes=20_000,
    )
    producer = EventProducer(settings)
    with caplog.at_level(logging.ERROR, logger="protege.events.producer"):
        for i in range(200):
            producer.publish(prediction(i))
        producer.close(timeout=1)
    stats = producer.stats()
    assert stats["spooled"] > 0 and stats["dropped"] > 0
    assert stats["spooled"] + stats["dropped"] == 200
    assert stats["spool_bytes"] <= 20_000
    assert any("dropping events" in r.getMessage() for r in caplog.records)


def test_counters_reach_the_metrics_callback(kafka_settings):
    seen: dict[str, int] = {}
    producer = EventProducer(
        kafka_settings, on_count=lambda name, n: seen.update({name: seen.get(name, 0) + n})
    )
    for i in range(5):
        producer.publish(prediction(i))
    assert producer.close(timeout=10)
    assert seen == {"produced": 5}
    assert producer.counters.produced == 5


def test_consumer_reads_what_the_producer_wrote(kafka_settings):
    events = [prediction(i) for i in range(10)]
    with EventProducer(kafka_settings) as producer:
        for event in events:
            producer.publish(event)
        assert producer.flush(timeout=10)
    with EventConsumer(kafka_settings, "round-trip") as consumer:
        received = []
        deadline = time.monotonic() + 20
        while len(received) < 10 and time.monotonic() < deadline:
            received.extend(consumer.poll(0.5))
            consumer.commit()
    assert sorted(e.event_id for e in received) == sorted(e.event_id for e in events)


def test_events_published_after_close_wait_on_disk_for_the_next_process(tmp_path):
    settings = Settings(home=tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}")
    producer = EventProducer(settings)
    producer.close(timeout=0.5)
    producer.publish(prediction(1))  # a request finishing during shutdown
    assert producer.stats()["spooled"] == 1
    assert EventProducer(settings).stats()["spool_pending"] == 1
