"""The improver's intake with the embedded Kafka broker: events in -> store rows, and a
restart mid-stream that loses nothing and counts nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from protege.events.producer import EventProducer
from protege.events.topics import ensure_topics
from protege.improver.data.ingest import Ingestor
from protege.improver.data.store import ExampleStore
from protege.schemas import FeedbackEvent, LabelProbability, ModelRef, PredictionEvent, Route


def prediction(i: int) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=f"p{i}",
        task="youtube-spam",
        text=f"comment {i}",
        label="HAM",
        probabilities=[LabelProbability(label="HAM", probability=0.9)],
        route=Route.specialist,
        served_by=ModelRef(model="tfidf", version="1"),
        latency_ms=1.0,
        timestamp=float(i),
    )


def feedback(i: int, verdict: str = "up", t: float | None = None) -> FeedbackEvent:
    return FeedbackEvent(
        prediction_id=f"p{i}",
        task="youtube-spam",
        verdict=verdict,
        reviewer="ann",
        label=None if verdict == "up" else "SPAM",
        timestamp=float(i) + 0.5 if t is None else t,
    )


def publish(settings, events) -> None:
    with EventProducer(settings) as producer:
        for event in events:
            producer.publish(event)
        assert producer.flush(timeout=30)
        assert producer.stats()["spooled"] == 0


def test_events_in_become_store_rows_once_each(kafka_settings, tmp_path):
    ensure_topics(kafka_settings)
    early = feedback(7, "down", t=100.0)  # feedback published before its prediction
    events = [early] + [prediction(i) for i in range(20)] + [feedback(i) for i in range(0, 20, 5)]
    publish(kafka_settings, events + events[:6])  # the first six are delivered twice
    store = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
    ingestor = Ingestor(store, kafka_settings, group_id="labels-test")
    try:
        stats = ingestor.run(idle_exit_s=2.0)
    finally:
        ingestor.close()
    assert store.counts() == {"events": 25, "predictions": 20, "feedback": 5, "gold": 0}
    assert stats["stored"] == 25 and stats["consumer_events"] + stats["consumer_duplicates"] >= 31
    (late_joined,) = [x for x in store.points("youtube-spam") if x.uid == "p7"]
    assert [(r.verdict, r.label) for r in late_joined.reviews] == [("down", "SPAM")]


def _improver(settings, url: str, idle_exit: float, log_path) -> subprocess.Popen:
    """`protege improver run` in its own process; its log goes to a file (a pipe
    nobody reads would fill up and stall it)."""
    env = {
        **os.environ,
        "PROTEGE_HOME": str(settings.home),
        "PROTEGE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PROTEGE_KAFKA_TOPIC_PREDICTIONS": settings.kafka_topic_predictions,
        "PROTEGE_KAFKA_TOPIC_FEEDBACK": settings.kafka_topic_feedback,
        "PROTEGE_KAFKA_TOPIC_MODELS": settings.kafka_topic_models,
        "PROTEGE_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
    }
    command = [
        sys.executable,
        "-m",
        "protege.cli",
        "improver",
        "run",
        "--ingest-only",  # the intake alone: no training rounds
        "--store",
        url,
        "--batch-size",
        "10",
        "--idle-exit",
        str(idle_exit),
        "--group",
        "labels-restart",
    ]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True
    )


@pytest.mark.timeout(180)
def test_improver_killed_mid_stream_and_restarted_stores_every_event_exactly_once(
    kafka_settings, tmp_path
):
    ensure_topics(kafka_settings)
    n = 600
    events = [prediction(i) for i in range(n)] + [feedback(i) for i in range(0, n, 3)]
    publish(kafka_settings, events + events[::10])  # some delivered twice from the start
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = ExampleStore(url)
    expected = {e.event_id for e in events}

    first = _improver(kafka_settings, url, idle_exit=30, log_path=tmp_path / "first.log")
    deadline = time.monotonic() + 90
    stored_at_kill = 0
    while time.monotonic() < deadline:
        stored_at_kill = store.counts()["events"]
        if stored_at_kill >= 60:
            break
        if first.poll() is not None:
            pytest.fail(f"improver exited early: {(tmp_path / 'first.log').read_text()[-2000:]}")
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)  # no clean shutdown: a crash
    first.wait(10)
    stored_at_kill = store.counts()["events"]
    first_log = (tmp_path / "first.log").read_text()
    assert 0 < stored_at_kill < len(expected), (
        f"kill not mid-stream ({stored_at_kill}): {first_log[-3000:]}"
    )

    second = _improver(kafka_settings, url, idle_exit=3, log_path=tmp_path / "second.log")
    try:
        out, _ = second.communicate(timeout=120)
    finally:
        second.kill()
        print((tmp_path / "second.log").read_text()[-5000:])
    assert second.returncode == 0
    stats = json.loads(out.strip().splitlines()[-1])

    assert set(store.event_ids()) == expected  # nothing lost, nothing extra
    assert store.counts() == {
        "events": len(expected),
        "predictions": n,
        "feedback": n // 3,
        "gold": 0,
    }
    assert stats["stored"] == len(expected) - stored_at_kill  # nothing counted twice
