"""PROTEGE_NAMESPACE: two deployments that share one Kafka broker and one MLflow store, with
namespaces of their own, never see each other's events or champions; with the default
namespace every name is the one Protégé always used."""

from __future__ import annotations

import time
import uuid

import pytest

from protege.events.producer import EventProducer
from protege.events.topics import ensure_topics
from protege.improver.data.ingest import Ingestor
from protege.improver.data.store import ExampleStore
from protege.registry import Registry
from protege.schemas import LabelProbability, ModelRef, PredictionEvent, Route
from protege.serving.champion_watcher import ChampionWatcher
from protege.serving.specialists import SpecialistSlots
from protege.settings import Settings, SettingsError, load_settings
from protege.taskspec import DEFAULT_TASKS_FILE, load_tasks
from specialist_builder import build_youtube_specialist

TASK = "youtube-spam"


def test_the_default_namespace_keeps_todays_names(monkeypatch):
    for name in ("NAMESPACE", "KAFKA_TOPIC_MODELS", "IMPROVER_GROUP"):
        monkeypatch.delenv(f"PROTEGE_{name}", raising=False)
    settings = Settings()
    assert settings.namespace == "protege"
    assert (
        settings.kafka_topic_predictions,
        settings.kafka_topic_feedback,
        settings.kafka_topic_models,
    ) == ("protege.predictions", "protege.feedback", "protege.models")
    assert settings.improver_group == "protege-improver"
    assert Registry.from_settings(settings).registered_name(TASK) == "protege-youtube-spam"


def test_a_namespace_prefixes_every_shared_name_and_explicit_names_win(monkeypatch):
    monkeypatch.setenv("PROTEGE_NAMESPACE", "ml.demo")
    monkeypatch.setenv("PROTEGE_KAFKA_TOPIC_MODELS", "legacy.models")
    settings = Settings()
    assert settings.kafka_topic_predictions == "ml.demo.predictions"
    assert settings.kafka_topic_feedback == "ml.demo.feedback"
    assert settings.kafka_topic_models == "legacy.models"
    assert settings.improver_group == "ml.demo-improver"
    assert Registry.from_settings(settings).registered_name(TASK) == "ml.demo-youtube-spam"
    monkeypatch.setenv("PROTEGE_IMPROVER_GROUP", "mine")
    assert Settings().improver_group == "mine"
    monkeypatch.setenv("PROTEGE_NAMESPACE", "Team A")
    with pytest.raises(SettingsError, match="PROTEGE_NAMESPACE: "):
        load_settings()


def prediction(n: int) -> PredictionEvent:
    return PredictionEvent(
        prediction_id=f"{TASK}.{n}.sig",
        task=TASK,
        text=f"comment {n}",
        label="HAM",
        probabilities=[LabelProbability(label="HAM", probability=0.9)],
        route=Route.specialist,
        served_by=ModelRef(model="tfidf", version="1"),
        latency_ms=1.0,
    )


def wait_for(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_two_namespaces_on_one_broker_and_one_mlflow_stay_apart(kafka_broker, tmp_path):
    kafka_broker.start()
    suffix = uuid.uuid4().hex[:6]
    mlflow = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = (tmp_path / "mlartifacts").as_uri()

    def deployment(namespace: str) -> Settings:
        return Settings(
            namespace=namespace,
            home=tmp_path / namespace,
            kafka_bootstrap=kafka_broker.bootstrap,
            mlflow_tracking_uri=mlflow,
            mlflow_artifact_root=artifacts,
            kafka_session_timeout_ms=1000,
            kafka_ack_timeout_s=1.0,
            events_spool_fsync_s=0.05,
            model_poll_s=600.0,  # champions move on ModelEvents alone
        )

    a, b = deployment(f"a{suffix}"), deployment(f"b{suffix}")
    tasks = {TASK: load_tasks(DEFAULT_TASKS_FILE)[TASK]}
    for settings in (a, b):
        ensure_topics(settings)
    producers = {s.namespace: EventProducer(s).start() for s in (a, b)}
    watchers = {s.namespace: ChampionWatcher(SpecialistSlots(tasks, s), s).start() for s in (a, b)}
    try:
        # Events: A's gateway logs three predictions, B's one; each improver stores its own.
        for n in range(3):
            producers[a.namespace].publish(prediction(n))
        producers[b.namespace].publish(prediction(100))
        for producer in producers.values():
            assert producer.flush(timeout=30)
        stored = {}
        for settings in (a, b):
            store = ExampleStore(f"sqlite:///{tmp_path / f'{settings.namespace}.db'}")
            ingestor = Ingestor(store, settings)
            try:
                ingestor.run(idle_exit_s=8.0)
            finally:
                ingestor.close()
            stored[settings.namespace] = sorted(p.text for p in store.points(TASK))
        assert stored == {
            a.namespace: ["comment 0", "comment 1", "comment 2"],
            b.namespace: ["comment 100"],
        }

        # Champions: A promotes its version 2 in the shared MLflow store; B has none.
        folder = build_youtube_specialist(tmp_path / "candidate")
        registry_a, registry_b = Registry.from_settings(a), Registry.from_settings(b)
        registry_a.log_candidate(TASK, folder)
        registry_a.promote(
            TASK, registry_a.log_candidate(TASK, folder), publish=producers[a.namespace].publish
        )
        assert producers[a.namespace].flush(timeout=30)
        live = lambda ns: (s := watchers[ns].slots.get(TASK)) and s.model.meta.version  # noqa: E731
        assert wait_for(lambda: live(a.namespace) == "2"), "A's gateway missed A's champion"
        assert registry_b.alias_version(TASK) is None and registry_b.list(TASK) == []
        # B's own version 1 becomes B's champion; A keeps serving its version 2.
        registry_b.promote(
            TASK, registry_b.log_candidate(TASK, folder), publish=producers[b.namespace].publish
        )
        assert producers[b.namespace].flush(timeout=30)
        assert wait_for(lambda: live(b.namespace) == "1"), "B's gateway missed B's champion"
        assert live(a.namespace) == "2" and registry_a.alias_version(TASK) == "2"
        assert {v.version for v in registry_a.list(TASK)} == {"1", "2"}
        assert [v.version for v in registry_b.list(TASK)] == ["1"]
        names = {e.name for e in registry_a.client.search_experiments()}
        assert {f"{a.namespace}-{TASK}", f"{b.namespace}-{TASK}"} <= names
    finally:
        for watcher in watchers.values():
            watcher.stop()
        for producer in producers.values():
            producer.close(timeout=5)
