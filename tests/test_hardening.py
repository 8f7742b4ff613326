"""Issue 15 without Ray: secrets stay out of arguments, limits (body size counted while
it streams, rates, quotas), degraded answers when the FM fails, the event loop never
waits on a slow spool disk, bounded store growth, atomic registry moves, private key
files, and a role test over every route of the app."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time

import httpx
import numpy as np
import pytest

from protege import datasets
from protege.events.broker import free_port
from protege.events.producer import EventProducer
from protege.events.spool import Spool
from protege.foundation.transformers_backend import TransformersBackend
from protege.improver.data.store import ExampleStore
from protege.registry import CHAMPION, ChampionMoved, Registry
from protege.schemas import FeedbackEvent, PredictionEvent, Route
from protege.serving import auth as auth_module
from protege.serving.api import build_api
from protege.serving.auth import ApiKeys, read_key_file
from protege.serving.champion_watcher import ChampionWatcher
from protege.serving.foundation_client import LocalFoundation
from protege.serving.gateway import GatewayCore
from protege.serving.keyfiles import add_key, first_admin_key, write_private
from protege.serving.limits import BodyLimit, CallerLimits, TokenBuckets, TooMany
from protege.serving.prediction_ids import PredictionIds, local_secret
from protege.serving.router import FoundationUnavailable, Router
from protege.serving.specialists import SpecialistSlots
from protege.settings import ENV_ONLY_FIELDS, Settings, public_args, secret_env
from protege.taskspec import Policy, RoutingSpec
from specialist_builder import build_youtube_specialist

SECRETS = {
    "api_keys": "ops:key-of-ops-0123=admin",
    "signing_secret": "signing-secret-0123456789",
    "openai_api_key": "sk-openai-secret-0123",
    "kafka_sasl_password": "sasl-password-0123",
}


# ---------------------------------------------------------------- 1. secrets


def test_every_secret_is_env_only_and_never_in_the_arguments():
    settings = Settings(**SECRETS, kafka_client_options={"ssl_password": "tls-pw-0123"})
    assert set(SECRETS) | {"kafka_client_options"} <= ENV_ONLY_FIELDS
    args = json.dumps(public_args(settings))
    text = repr(settings) + str(settings) + args
    for secret in [*SECRETS.values(), "tls-pw-0123"]:
        assert secret not in text
    # What the environment carries gives the replica the same settings back.
    env = secret_env(settings)
    assert env["PROTEGE_KAFKA_SASL_PASSWORD"] == SECRETS["kafka_sasl_password"]
    assert json.loads(env["PROTEGE_KAFKA_CLIENT_OPTIONS"]) == {"ssl_password": "tls-pw-0123"}


def test_build_app_refuses_secrets_and_binds_no_settings_object(monkeypatch):
    from ray import cloudpickle

    from protege.serving.app import build_app

    with pytest.raises(ValueError, match="environment"):
        build_app({"signing_secret": "x" * 20})
    for name, value in SECRETS.items():
        monkeypatch.setenv(f"PROTEGE_{name.upper()}", value)
    app = build_app(public_args(Settings()))
    bound = cloudpickle.dumps(
        [app._bound_deployment.init_args, app._bound_deployment.init_kwargs]
    )  # what Serve ships to its controller, FoundationModel's args included
    assert not any(isinstance(a, Settings) for a in app._bound_deployment.init_args)
    for secret in SECRETS.values():
        assert secret.encode() not in bound


# ---------------------------------------------------------------- 2. limits


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_token_buckets_admit_a_burst_then_say_when_to_retry():
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # per name
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("x", rate=0) == 0.0  # 0: no limit


def test_a_key_over_its_rate_gets_429_with_retry_after_and_its_own_limits_win():
    clock = Clock()
    limits = CallerLimits(rate_per_s=100, burst=100, feedback_per_hour=2, clock=clock)
    slow = auth_module.Identity("slow", frozenset({"predict"}), rate_per_s=0.5, rate_burst=1)
    limits.admit_request(slow)
    with pytest.raises(TooMany) as caught:
        limits.admit_request(slow)
    assert caught.value.status_code == 429 and caught.value.headers["Retry-After"] == "2"
    reviewer = auth_module.Identity("ana", frozenset({"feedback"}))
    limits.admit_verdict(reviewer)
    limits.admit_verdict(reviewer)
    with pytest.raises(TooMany) as caught:
        limits.admit_verdict(reviewer)
    assert int(caught.value.headers["Retry-After"]) == 1800  # one verdict per 30 min


async def echo_app(scope, receive, send):
    """Reads the whole body, as any handler would."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def run_body(headers, chunks, limit=1000):
    """Feed `chunks` to BodyLimit(echo_app); (status, bytes the app was given)."""
    given = 0
    sent: list[dict] = []

    async def receive():
        nonlocal given
        chunk = chunks.pop(0)
        given += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": headers}
    asyncio.run(BodyLimit(echo_app, max_bytes=limit)(scope, receive, send))
    return sent[0]["status"], given


def test_a_declared_body_over_the_limit_is_413_before_reading_a_byte():
    status, given = run_body([(b"content-length", b"5000000000")], [b"x" * 100])
    assert (status, given) == (413, 0)


def test_a_chunked_body_is_cut_off_at_the_limit_not_read_to_its_end():
    chunks = [b"x" * 300 for _ in range(1000)]  # 300 kB, no content-length
    status, given = run_body([(b"transfer-encoding", b"chunked")], chunks)
    assert status == 413 and given <= 1000 + 300  # the chunk that crossed it, no more
    assert run_body([], [b"x" * 300, b"x" * 300])[0] == 200


# ---------------------------------------------------------------- 3. degrade


def youtube_spec():
    return Settings().load_tasks()["youtube-spam"]


class FailingFM:
    def __init__(self, delay_s: float = 0.0, error: Exception | None = None):
        self.delay_s, self.error, self.calls = delay_s, error, 0

    async def __call__(self, task, texts, adapter=None):
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.error:
            raise self.error
        return np.tile([0.1, 0.9], (len(texts), 1))


async def unsure_specialist(task, texts):
    return np.tile([0.6, 0.4], (len(texts), 1))


@pytest.mark.parametrize(
    "fm", [FailingFM(error=RuntimeError("replica died")), FailingFM(delay_s=5.0)]
)
def test_an_escalation_the_fm_cannot_answer_gets_the_specialists_answer_degraded(fm):
    from protege.schemas import ModelRef

    router = Router(fm, lambda: ModelRef(model="fm", version="1"), deadline_s=0.2)
    specialist = (ModelRef(model="tfidf", version="1"), unsure_specialist, 0.8)
    started = time.perf_counter()
    answers = asyncio.run(router.route(youtube_spec(), ["a", "b"], ["p1", "p2"], specialist))
    assert time.perf_counter() - started < 2.0  # the deadline, not the FM's 5 s
    assert [(a.route, a.degraded, a.answer.model.model) for a in answers] == [
        (Route.specialist, True, "tfidf")
    ] * 2
    assert not any(a.shadow for a in answers)


def test_a_text_only_the_fm_can_answer_is_try_again_not_a_bug():
    from protege.schemas import ModelRef

    router = Router(FailingFM(delay_s=5.0), lambda: ModelRef(model="fm", version="1"), 0.1)
    spec = youtube_spec().model_copy(update={"routing": RoutingSpec(policy=Policy.foundation_only)})
    with pytest.raises(FoundationUnavailable, match="0.1 s"):
        asyncio.run(router.route(spec, ["a"], ["p1"], None))


# ---------------------------------------------------------------- the in-process app


@pytest.fixture(scope="module")
def foundation():
    return LocalFoundation(TransformersBackend.from_settings(Settings()))


@pytest.fixture(scope="module")
def specialist_folder(tmp_path_factory):
    return build_youtube_specialist(tmp_path_factory.mktemp("models") / "v1", version="1")


def in_process_app(home, foundation, folder, publish=None, **overrides):
    """The gateway's FastAPI app as a replica builds it, without Ray: real specialist,
    real FM, a real registry for the admin routes, keys with each role."""
    settings = Settings(
        home=home,
        api_keys="predict:predict-key=predict;ana:feedback-key=feedback;ops:admin-key=admin",
        signing_secret="test-secret-of-at-least-16-bytes",
        **overrides,
    )
    tasks = settings.load_tasks()
    slots = SpecialistSlots(tasks, settings)
    assert slots.swap("youtube-spam", folder)
    core = GatewayCore(
        tasks,
        foundation,
        slots,
        PredictionIds.from_settings(settings),
        publish=publish,
        fm_deadline_s=settings.fm_deadline_s,
    )
    registry = Registry.from_settings(settings)
    watcher = ChampionWatcher(slots, settings, registry=registry)
    return build_api(core, ApiKeys.from_settings(settings), watcher, settings), core


def client_of(app):
    # As a server would: Starlette re-raises a 500's exception after answering, for logs.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://app")


# ---------------------------------------------------------------- 4. the spool's slow disk


def test_a_slow_spool_disk_never_slows_a_request(
    tmp_path, monkeypatch, foundation, specialist_folder
):
    settings = Settings(
        home=tmp_path,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",  # no broker: everything spools
        events_queue_size=5,
    )
    producer = EventProducer(settings).start()
    app, core = in_process_app(tmp_path, foundation, specialist_folder, publish=producer.publish)
    # The specialist alone answers: each request publishes its event at once.
    core.tasks["youtube-spam"] = core.tasks["youtube-spam"].model_copy(
        update={"routing": RoutingSpec(policy=Policy.specialist_only, shadow_rate=0.0)}
    )
    slow_append, slow_sync = Spool.append, Spool.sync

    def append(self, *args):
        time.sleep(0.2)  # a disk 200 ms behind on every write
        return slow_append(self, *args)

    def sync(self):
        time.sleep(0.5)  # and half a second per fsync, holding the spool's lock
        return slow_sync(self)

    monkeypatch.setattr(Spool, "append", append)
    monkeypatch.setattr(Spool, "sync", sync)
    texts = datasets.load("youtube-spam", "train").texts[:40]
    headers = {"Authorization": "Bearer predict-key"}

    async def traffic():
        latencies = []
        async with client_of(app) as client:
            for text in texts:
                started = time.perf_counter()
                response = await client.post(
                    "/v1/tasks/youtube-spam/predict", json={"text": text}, headers=headers
                )
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text
        return latencies

    latencies = asyncio.run(traffic())
    # 40 events through a disk that takes 8 s to write them, while the queue in front
    # of it holds 5: no request waited on a write (>= 0.2 s) or an fsync (0.5 s).
    assert max(latencies) < 0.2 and float(np.median(latencies)) < 0.05, sorted(latencies)
    monkeypatch.setattr(Spool, "append", slow_append)
    monkeypatch.setattr(Spool, "sync", slow_sync)
    producer.close(timeout=10)
    stats = producer.stats()
    assert stats["published"] == 40 and stats["dropped"] == 0
    assert stats["spooled"] + stats["produced"] == 40


# ---------------------------------------------------------------- 7. every route, every role


PUBLIC = {
    "healthz",
    "readyz",
    "openapi",
    "swagger_ui_html",
    "swagger_ui_redirect",
    "redoc_html",
    "console_sign_in_form",
}
# The console's sign-in takes a key in its form: without the form's CSRF token (its
# sign-in cookie) it is 403 for everyone, whatever the headers say.
SIGN_IN = {"console_sign_in"}
# The role each route needs, by route name (the handler's name). A new route fails the
# test until it is added here: decide who may call it.
ROLE_OF = {
    "predict": "predict",
    "list_tasks": "predict",
    "get_task": "predict",
    "feedback": "feedback",
    "review_queue": "feedback",
    "event_log": "admin",
    "list_models": "admin",
    "promote": "admin",
    "rollback": "admin",
    "retrain": "admin",
    "training_jobs": "admin",
    "training_job_logs": "admin",
    "stop_training_job": "admin",
    # The improver's way to the FM: role `foundation`, which of these keys only admin holds.
    "foundation_model": "admin",
    "foundation_score": "admin",
    # The review console (/review): a signed-in reviewer, or a Bearer key (scripts).
    "console_sign_out": "feedback",
    "console_tasks": "feedback",
    "console_review": "feedback",
    "console_verdict": "feedback",
    "console_skip": "feedback",
    "console_undo": "feedback",
    "console_progress": "feedback",
    "console_task_page": "feedback",
    "console_promote": "admin",
    "console_rollback": "admin",
}
KEYS = {"predict": "predict-key", "feedback": "feedback-key", "admin": "admin-key"}
RANK = {"predict": {"predict", "admin"}, "feedback": {"feedback", "admin"}, "admin": {"admin"}}


def test_every_route_answers_each_role_as_its_table_says(tmp_path, foundation, specialist_folder):
    from fastapi.routing import iter_route_contexts

    events = []
    app, _ = in_process_app(tmp_path, foundation, specialist_folder, publish=events.append)
    # app.routes, with each included router's routes under their full paths.
    routes = [
        (method, route.path, route.name)
        for route in iter_route_contexts(app.routes)
        for method in sorted((route.methods or set()) - {"HEAD"})
    ]
    names = {name for _, _, name in routes}
    unknown = names - PUBLIC - SIGN_IN - set(ROLE_OF)
    assert not unknown, f"routes with no expected role in ROLE_OF: {sorted(unknown)}"
    assert set(ROLE_OF) <= names  # the table names no route that is gone

    async def walk():
        seen = {}
        async with client_of(app) as client:
            for method, path, name in routes:
                url = path.replace("{task}", "youtube-spam")
                for role in (None, "predict", "feedback", "admin"):
                    headers = {"Authorization": f"Bearer {KEYS[role]}"} if role else {}
                    body = {} if method == "POST" else None
                    response = await client.request(method, url, json=body, headers=headers)
                    seen[(name, role)] = response.status_code
        return seen

    seen = asyncio.run(walk())
    for (name, role), status in seen.items():
        if name in PUBLIC:
            assert status not in (401, 403), (name, role, status)
        elif name in SIGN_IN:
            assert status == 403, (name, role, status)
        elif role is None:
            assert status == 401, (name, role, status)
        elif role in RANK[ROLE_OF[name]]:
            assert status not in (401, 403, 500), (name, role, status)
        else:
            assert status == 403, (name, role, status)


def test_admin_lists_models_and_asks_for_a_retrain(tmp_path, foundation, specialist_folder):
    events = []
    app, _ = in_process_app(tmp_path, foundation, specialist_folder, publish=events.append)
    admin = {"Authorization": "Bearer admin-key"}

    async def calls():
        async with client_of(app) as client:
            models = await client.get("/v1/admin/tasks/youtube-spam/models", headers=admin)
            retrain = await client.post("/v1/admin/tasks/youtube-spam/retrain", headers=admin)
            unknown = await client.post("/v1/admin/tasks/nope/retrain", headers=admin)
            junk = await client.post(
                "/v1/admin/tasks/youtube-spam/promote", json={"version": "1; drop"}, headers=admin
            )
            return models, retrain, unknown, junk

    models, retrain, unknown, junk = asyncio.run(calls())
    assert models.status_code == 200 and models.json() == []
    assert retrain.status_code == 202 and retrain.json()["task"] == "youtube-spam"
    assert [e.kind for e in events] == ["retrain"] and events[0].task == "youtube-spam"
    assert unknown.status_code == 404 and junk.status_code == 422


def test_a_bug_is_a_500_with_a_request_id_and_fm_trouble_a_503_with_retry_after(
    tmp_path, foundation, specialist_folder, caplog
):
    app, core = in_process_app(tmp_path, foundation, specialist_folder, fm_deadline_s=0.01)
    headers = {"Authorization": "Bearer predict-key"}

    def broken(*_):
        raise ZeroDivisionError("a bug")

    async def calls():
        async with client_of(app) as client:
            fm_only = await client.post(
                "/v1/tasks/banking77/predict", json={"text": "where is my card"}, headers=headers
            )
            core.specialists.get = broken
            bug = await client.post(
                "/v1/tasks/youtube-spam/predict", json={"text": "hello"}, headers=headers
            )
            return fm_only, bug

    fm_only, bug = asyncio.run(calls())
    assert fm_only.status_code == 503 and fm_only.headers["Retry-After"] == "1"
    assert bug.status_code == 500
    request_id = bug.headers["X-Request-ID"]
    assert request_id in bug.json()["detail"]
    assert any(request_id in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- 5. bounded growth


def prediction(i: int, ts: float, task="t") -> PredictionEvent:
    return PredictionEvent(
        prediction_id=f"p{i}",
        task=task,
        text=f"text {i}",
        label="A",
        probabilities=[],
        route=Route.specialist,
        served_by={"model": "m", "version": "1"},
        latency_ms=1.0,
        timestamp=ts,
    )


def test_retention_keeps_the_newest_and_the_trigger_counts_go_on(tmp_path):
    store = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
    now = time.time()
    store.record_many([prediction(i, now - 1000 + i) for i in range(100)])
    store.record_many(
        [
            FeedbackEvent(
                prediction_id=f"p{i}", task="t", verdict="up", reviewer="r", timestamp=now
            )
            for i in (5, 95)
        ]
    )
    before = store.event_counts("t")
    deleted = store.prune("t", max_age_s=None, max_predictions=30, now=now)
    assert deleted["predictions"] == 70 and deleted["feedback"] == 1
    kept = store.points("t")
    assert len(kept) == 30 and min(int(p.uid[1:]) for p in kept) == 70
    assert store.event_counts("t") == before
    # By age: the event ids go too, and the counts still do not go back.
    deleted = store.prune("t", max_age_s=10.0, max_predictions=None, now=now + 1e6)
    assert deleted["predictions"] == 30 and deleted["events"] == 102
    assert store.event_counts("t") == before and store.counts("t")["events"] == 0


def test_a_round_reads_a_window_of_the_newest_predictions(tmp_path):
    store = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
    now = time.time()
    store.record_many([prediction(i, now + i) for i in range(200)])
    store.record(
        FeedbackEvent(prediction_id="p199", task="t", verdict="up", reviewer="r", timestamp=now)
    )
    window = store.points("t", limit=50)
    assert [p.uid for p in window] == [f"p{i}" for i in range(150, 200)]
    assert window[-1].reviews and not any(p.reviews for p in window[:-1])


def test_a_restarted_replica_keeps_its_consumer_group(tmp_path, specialist_folder):
    settings = Settings(home=tmp_path)
    slots = SpecialistSlots(settings.load_tasks(), settings)
    first = ChampionWatcher(slots, settings, replica_slot=1).group_id
    again = ChampionWatcher(slots, settings, replica_slot=1).group_id
    other = ChampionWatcher(slots, settings, replica_slot=2).group_id
    assert first == again != other


# ---------------------------------------------------------------- 6. atomic registry


@pytest.fixture
def registry_with_versions(tmp_path, specialist_folder):
    registry = Registry(
        f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri(), tmp_path / "cache"
    )
    versions = [registry.log_candidate("youtube-spam", specialist_folder) for _ in range(3)]
    registry.promote("youtube-spam", versions[0])
    return registry, versions


def test_a_promotion_during_a_round_stands(registry_with_versions):
    registry, (v1, v2, v3) = registry_with_versions
    judged_against = registry.alias_version("youtube-spam", CHAMPION)  # the round starts
    registry.promote("youtube-spam", v2, reasons=["an operator"])  # meanwhile
    with pytest.raises(ChampionMoved, match=f"version {v2}"):
        registry.promote("youtube-spam", v3, expected_champion=judged_against)
    assert registry.alias_version("youtube-spam", CHAMPION) == v2


def test_two_promotions_at_once_never_both_win(registry_with_versions):
    registry, (v1, v2, v3) = registry_with_versions
    outcomes = []

    def promote(version):
        try:
            registry.promote("youtube-spam", version, expected_champion=v1)
            outcomes.append(version)
        except ChampionMoved:
            outcomes.append("moved")

    threads = [threading.Thread(target=promote, args=(v,)) for v in (v2, v3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes, key=str) == sorted([outcomes[0], "moved"], key=str)
    winner = next(o for o in outcomes if o != "moved")
    assert registry.alias_version("youtube-spam", CHAMPION) == winner


def test_key_files_are_private_from_their_first_byte(tmp_path):
    previous = os.umask(0)  # the worst case: files made world-writable by default
    try:
        write_private(tmp_path / "a", b"x")
        secret = local_secret(tmp_path / "signing.key")
        add_key(tmp_path / "keys.json", "app", {"predict"})
    finally:
        os.umask(previous)
    for name in ("a", "signing.key", "keys.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert len(secret) == 32 and local_secret(tmp_path / "signing.key") == secret
    assert not write_private(tmp_path / "a", b"y", replace=False)  # the first one stays
    assert (tmp_path / "a").read_bytes() == b"x"


# ---------------------------------------------------------------- 9. keys


def test_the_first_start_makes_one_admin_key_and_keeps_only_its_digest(tmp_path, monkeypatch):
    for name in ("PROTEGE_API_KEYS", "PROTEGE_API_KEYS_FILE", "PROTEGE_AUTH_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    settings, key = first_admin_key(Settings(home=tmp_path))
    assert key and settings.api_keys_file == tmp_path / "keys.json"
    text = settings.api_keys_file.read_text()
    assert key not in text
    identity = ApiKeys.from_settings(settings).identify(key)
    assert identity.name == "admin" and identity.has("admin")
    again, second = first_admin_key(Settings(home=tmp_path))
    assert second is None and again.api_keys_file == settings.api_keys_file
    configured, none = first_admin_key(Settings(home=tmp_path / "x", api_keys="k=predict"))
    assert none is None and configured.api_keys_file is None


def test_keys_create_adds_a_key_a_running_gateway_reads_within_a_second(
    tmp_path, monkeypatch, capsys
):
    from protege import cli

    keys_file = tmp_path / "keys.json"
    add_key(keys_file, "ops", {"admin"})
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path))
    monkeypatch.setenv("PROTEGE_API_KEYS_FILE", str(keys_file))
    gateway_keys = ApiKeys.from_settings(Settings())
    code = cli.main(["keys", "create", "--name", "app", "--role", "predict", "--rate-per-s", "5"])
    assert code == 0
    key = capsys.readouterr().out.strip()
    monkeypatch.setattr(auth_module, "KEY_FILE_CHECK_S", 0.0)
    gateway_keys._next_check = 0.0
    identity = gateway_keys.identify(key)
    assert identity.name == "app" and identity.roles == {"predict"} and identity.rate_per_s == 5
    assert {i.name for i in read_key_file(keys_file).values()} == {"ops", "app"}
    assert cli.main(["keys", "create", "--name", "app", "--role", "predict"]) == 2  # taken
