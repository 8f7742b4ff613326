"""Shared fixtures."""

from __future__ import annotations

import os
import uuid
import warnings

import pytest
import sqlalchemy as sa

# kafka-python 3.0 loads its protocol schemas through importlib.resources' legacy API:
# hundreds of DeprecationWarnings at import that say nothing about this project.
warnings.filterwarnings("ignore", r"(read|open)_text is deprecated", DeprecationWarning)

from protege.events.broker import EmbeddedBroker  # noqa: E402
from protege.improver.data.store import ExampleStore  # noqa: E402
from protege.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """The embedded Tansu broker on a free loopback port, for the whole session.

    Yields the `EmbeddedBroker`: `.bootstrap` ("127.0.0.1:PORT"), and `.kill()`,
    `.stop()`, `.start()`, `.restart()` that keep the same port. Storage is memory:
    a restart comes back empty. A test that stops it should start it again;
    `kafka_settings` does so anyway.
    """
    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    with broker:
        yield broker


@pytest.fixture
def kafka_settings(kafka_broker, tmp_path) -> Settings:
    """Settings on the session broker with topics of this test's own and a fresh spool.

    Short timeouts: Tansu delays a new group member by about the session timeout.
    """
    kafka_broker.start()  # no-op when running; revives it after a test that stopped it
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        home=tmp_path,
        kafka_bootstrap=kafka_broker.bootstrap,
        kafka_topic_predictions=f"test.{suffix}.predictions",
        kafka_topic_feedback=f"test.{suffix}.feedback",
        kafka_topic_models=f"test.{suffix}.models",
        kafka_session_timeout_ms=1000,
        kafka_ack_timeout_s=1.0,
        kafka_reconnect_max_s=0.5,
        events_spool_fsync_s=0.05,
    )


@pytest.fixture(scope="module")
def serving_app(tmp_path_factory, kafka_broker):
    """The real Ray Serve app on a free port, for one test module (Ray stops after it,
    so that later modules can start Ray their own way): auth on (keys
    below), a youtube-spam TF-IDF specialist (version "7"), the SmolLM2 FM, every
    prediction and feedback logged to the session broker, metrics on their own port.

    Yields a `ServingApp` with `.url`, `.settings`, `.specialist` (the same model,
    in-process) and `.metrics_port`.
    """
    from dataclasses import dataclass

    from protege.artifact import Specialist
    from protege.events.broker import free_port
    from protege.serving.launch import start_serve, stop_serve
    from specialist_builder import build_youtube_specialist

    @dataclass
    class ServingApp:
        url: str
        settings: Settings
        specialist: Specialist
        metrics_port: int

    home = tmp_path_factory.mktemp("serving-home")
    folder = build_youtube_specialist(home / "models" / "youtube-spam" / "current", version="7")
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        home=home,
        http_port=free_port(),
        # Each key is an identity: the feedback key is the reviewer "ana". The improver
        # asks this app's FM with its own key (role foundation).
        api_keys="predict:predict-key=predict;ana:feedback-key=feedback;ops:admin-key=admin;"
        "improver:improver-key=foundation",
        fm_key="improver-key",
        signing_secret="test-secret-of-at-least-16-bytes",
        kafka_bootstrap=kafka_broker.bootstrap,
        kafka_topic_predictions=f"app.{suffix}.predictions",
        kafka_topic_feedback=f"app.{suffix}.feedback",
        kafka_topic_models=f"app.{suffix}.models",
        kafka_session_timeout_ms=1000,
        kafka_ack_timeout_s=1.0,
        kafka_reconnect_max_s=0.5,
        events_spool_fsync_s=0.05,
        model_poll_s=2.0,
        rate_per_s=0,  # these modules send as fast as they can; limits have their own tests
    )
    metrics_port = free_port()
    url = start_serve(settings, app_name="protege-test", metrics_port=metrics_port)
    yield ServingApp(url, settings, Specialist(folder, ["HAM", "SPAM"]), metrics_port)
    stop_serve()


# The example store on SQLite and on the machine's Postgres.
POSTGRES_URL = os.environ.get(
    "PROTEGE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres() -> sa.Engine:
    """The machine's Postgres (.ci/run starts it): a missing server fails, never skips."""
    engine = sa.create_engine(POSTGRES_URL)
    with engine.connect():
        pass
    return engine


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or a schema of its own on Postgres."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    admin = _postgres()
    schema = f"labels_{uuid.uuid4().hex[:10]}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def store(store_url):
    s = ExampleStore(store_url)
    yield s
    s.close()
