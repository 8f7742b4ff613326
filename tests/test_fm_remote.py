"""The improver asks the deployment's FM instead of loading one: the gateway's
/v1/foundation routes on a real uvicorn server over the real CPU FM, and the
improver's HTTP client (foundation/remote.py) against them, down to a whole round
whose exam needs FM answers."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from protege import datasets
from protege.events.broker import free_port
from protege.foundation.remote import (
    RemoteFoundation,
    RemoteFoundationError,
    gateway_url,
    served_model_name,
)
from protege.foundation.transformers_backend import TransformersBackend
from protege.improver.data.store import ExampleStore
from protege.improver.judge.exam import foundation_answers, serving_prompt_scorer
from protege.improver.labeling.prompts import prompt_key
from protege.improver.loop import lazy_backend, run_round
from protege.registry import Registry
from protege.schemas import LabelProbability, ModelRef, PredictionEvent, Route
from protege.serving.api import build_api
from protege.serving.auth import ApiKeys, parse_key_list
from protege.serving.foundation_client import LocalFoundation
from protege.serving.gateway import GatewayCore
from protege.serving.prediction_ids import PredictionIds
from protege.serving.specialists import SpecialistSlots
from protege.settings import Settings
from protege.taskspec import PromptSpec, TrainingSpec

KEYS = "improver:fm-key=foundation;app:predict-key=predict;ops:admin-key=admin"
TEXTS = [
    "Check out my channel and subscribe! http://bit.ly/x",
    "This song brings back so many memories",
    "Free gift cards, click the link in my profile",
]


class Served:
    """An ASGI app on uvicorn in a thread, on a free loopback port."""

    def __init__(self, app):
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def backend():
    return TransformersBackend.from_settings(Settings())


@pytest.fixture(scope="module")
def tasks():
    return Settings().load_tasks()


def gateway_app(backend, tmp_path, deadline_s: float = 120.0):
    settings = Settings(home=tmp_path, rate_per_s=0, fm_score_deadline_s=deadline_s)
    tasks = settings.load_tasks()
    core = GatewayCore(
        tasks,
        LocalFoundation(backend),
        SpecialistSlots(tasks, settings),
        PredictionIds(b"0123456789abcdef0123"),
    )
    return build_api(core, ApiKeys(parse_key_list(KEYS)), settings=settings)


@pytest.fixture(scope="module")
def gateway(backend, tmp_path_factory):
    with Served(gateway_app(backend, tmp_path_factory.mktemp("gateway"))) as served:
        yield served.url


def recording(client: RemoteFoundation) -> list[dict]:
    """The request bodies `client` sends, as the server receives them."""
    sent: list[dict] = []
    client._http.event_hooks["request"].append(
        lambda request: sent.append(json.loads(request.content) if request.content else {})
    )
    return sent


def test_remote_scores_equal_the_local_backends_for_the_task_prompt_and_a_prompt_lf(
    gateway, backend, tasks
):
    task = tasks["youtube-spam"]
    remote = RemoteFoundation(gateway, "fm-key")
    sent = recording(remote)
    assert remote.ref == backend.ref  # GET /v1/foundation: no texts scored for it

    served = remote.predict_proba(task, TEXTS)
    assert served.shape == (3, 2)
    np.testing.assert_allclose(served, backend.predict_proba(task, TEXTS), atol=1e-5)

    lf = task.labeling.prompt_lfs[-1]  # [0] renders as the task prompt does
    by_lf = remote.predict_proba(task, TEXTS, prompt=lf.as_prompt())
    np.testing.assert_allclose(by_lf, backend.predict_proba(task, TEXTS, lf.as_prompt()), atol=1e-5)
    assert not np.allclose(by_lf, served, atol=1e-3)  # another prompt reached the FM

    # The task's own prompt, given explicitly, goes as "no prompt"; an LF's by its name.
    remote.predict_proba(task, TEXTS[:1], prompt=task.prompt)
    bodies = [b for b in sent if b]
    assert [b["prompt"] for b in bodies] == [None, lf.name, None]
    assert all(set(b) == {"task", "texts", "prompt", "adapter"} for b in bodies)
    assert lf.template not in json.dumps(bodies)  # names travel, never templates


def test_a_batch_over_the_tasks_limit_is_sent_in_parts(gateway, backend, tasks):
    task = tasks["youtube-spam"]
    small = task.model_copy(update={"limits": task.limits.model_copy(update={"max_batch": 2})})
    remote = RemoteFoundation(gateway, "fm-key")
    sent = recording(remote)
    probs = remote.predict_proba(small, TEXTS)
    assert [len(b["texts"]) for b in sent] == [2, 1]
    np.testing.assert_allclose(probs, backend.predict_proba(task, TEXTS), atol=1e-5)


def test_unknown_tasks_prompts_adapters_oversize_batches_and_bad_keys_are_refused(gateway, tasks):
    fm = {"Authorization": "Bearer fm-key"}
    ok = {"task": "youtube-spam", "texts": ["hello"]}
    with httpx.Client(base_url=gateway, timeout=60) as http:
        unknown_task = http.post("/v1/foundation/score", json={**ok, "task": "nope"}, headers=fm)
        assert unknown_task.status_code == 404 and "unknown task 'nope'" in unknown_task.text
        unknown_prompt = http.post("/v1/foundation/score", json={**ok, "prompt": "x"}, headers=fm)
        assert unknown_prompt.status_code == 404
        names = [spec.name for spec in tasks["youtube-spam"].labeling.prompt_lfs]
        assert (
            "no prompt LF 'x'" in unknown_prompt.json()["detail"]
            and names[0] in (unknown_prompt.json()["detail"])
        )
        adapter = http.post("/v1/foundation/score", json={**ok, "adapter": "lora-7"}, headers=fm)
        assert adapter.status_code == 404 and "lora-7" in adapter.json()["detail"]
        limit = tasks["youtube-spam"].limits.max_batch
        oversize = {**ok, "texts": ["a"] * (limit + 1)}
        too_many = http.post("/v1/foundation/score", json=oversize, headers=fm)
        assert too_many.status_code == 422 and f"at most {limit} texts" in too_many.text
        template = {**ok, "template": "{text}"}  # a template is not an accepted field
        assert http.post("/v1/foundation/score", json=template, headers=fm).status_code == 422

        assert http.post("/v1/foundation/score", json=ok).status_code == 401
        wrong = {"Authorization": "Bearer not-a-key"}
        assert http.post("/v1/foundation/score", json=ok, headers=wrong).status_code == 401
        predict_only = {"Authorization": "Bearer predict-key"}
        refused = http.post("/v1/foundation/score", json=ok, headers=predict_only)
        assert refused.status_code == 403 and "'foundation' role" in refused.text
        assert http.get("/v1/foundation", headers=predict_only).status_code == 403
        admin = {"Authorization": "Bearer admin-key"}  # admin implies every role
        assert http.post("/v1/foundation/score", json=ok, headers=admin).status_code == 200
        # The improver's key predicts nothing: it only asks the FM.
        predict = http.post("/v1/tasks/youtube-spam/predict", json={"text": "hi"}, headers=fm)
        assert predict.status_code == 403


def test_the_client_says_what_went_wrong_and_retries_only_what_is_safe(gateway, tasks):
    task = tasks["youtube-spam"]
    keyless = RemoteFoundation(gateway, None, attempts=3, backoff_s=0.01)
    sent = recording(keyless)
    with pytest.raises(RemoteFoundationError, match="401.*PROTEGE_FM_KEY"):
        keyless.predict_proba(task, TEXTS[:1])
    assert len(sent) == 1  # a refusal is not retried

    remote = RemoteFoundation(gateway, "fm-key")
    sent = recording(remote)
    with pytest.raises(ValueError, match="only the task's prompt and its prompt LFs'"):
        remote.predict_proba(task, TEXTS[:1], prompt=PromptSpec(template="Say: {text}"))
    assert sent == []  # refused before anything was sent

    # A tasks file that differs from the gateway's (a label's description) fails loudly
    # instead of caching another question's answers under this one's key.
    edited = task.model_copy(
        update={
            "labels": [task.labels[0].model_copy(update={"description": "other"}), task.labels[1]]
        }
    )
    with pytest.raises(RemoteFoundationError, match="tasks file differs"):
        remote.predict_proba(edited, TEXTS[:1])

    nobody = RemoteFoundation(
        f"http://127.0.0.1:{free_port()}", "fm-key", attempts=2, backoff_s=0.01
    )
    sent = recording(nobody)
    with pytest.raises(RemoteFoundationError, match="ConnectError"):
        nobody.predict_proba(task, TEXTS[:1])
    assert len(sent) == 2  # nothing reached a server: safe to send again


def test_an_fm_past_the_deadline_is_a_503_that_the_client_retries(backend, tasks, tmp_path):
    with Served(gateway_app(backend, tmp_path, deadline_s=0.001)) as late:
        with httpx.Client(base_url=late.url, timeout=60) as http:
            body = {"task": "youtube-spam", "texts": TEXTS}
            answer = http.post(
                "/v1/foundation/score", json=body, headers={"Authorization": "Bearer fm-key"}
            )
        assert answer.status_code == 503 and "within 0.001 s" in answer.json()["detail"]
        assert answer.headers["retry-after"]
        remote = RemoteFoundation(late.url, "fm-key", attempts=2, backoff_s=0.01)
        sent = recording(remote)
        with pytest.raises(RemoteFoundationError, match="503"):
            remote.predict_proba(tasks["youtube-spam"], TEXTS)
        assert len(sent) == 2


def test_the_improver_reaches_this_machines_gateway_unless_told_otherwise():
    assert gateway_url(Settings(http_port=8123)) == "http://127.0.0.1:8123"
    assert gateway_url(Settings(http_host="0.0.0.0", http_port=80)) == "http://127.0.0.1:80"
    assert gateway_url(Settings(fm_url="http://serve-svc:8000/")) == "http://serve-svc:8000"


def traffic_event(i: int, text: str) -> PredictionEvent:
    """A specialist's answer: no FM answer recorded with it."""
    return PredictionEvent(
        prediction_id=f"youtube-spam.{i}.sig",
        task="youtube-spam",
        text=text,
        label="HAM",
        probabilities=[LabelProbability(label="HAM", probability=0.6)],
        route=Route.specialist,
        served_by=ModelRef(model="tfidf-lr", version="1"),
        latency_ms=1.0,
        timestamp=float(i),
    )


def test_a_round_whose_exam_needs_fm_answers_gets_them_from_the_gateway(
    gateway, backend, tasks, tmp_path
):
    spec = tasks["youtube-spam"]
    task = spec.model_copy(
        update={
            "training": TrainingSpec(families=["tfidf"]),
            "retrain": spec.retrain.model_copy(update={"fm_eval_max": 6, "prompt_lf_budget": 3}),
        }
    )
    store = ExampleStore(f"sqlite:///{tmp_path / 'store.db'}")
    train = datasets.youtube("train").subset(range(300))
    store.record_many([traffic_event(i, t) for i, t in enumerate(train.texts)])
    gold = datasets.youtube("test")
    store.import_gold(task.name, zip(gold.texts, gold.labels), source="file:test.csv")
    registry = Registry(
        f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri(), tmp_path / "cache"
    )
    # The improver's pod inherits the GPU deployment's settings: it could not start vLLM,
    # and need not: it asks the gateway.
    settings = Settings(
        home=tmp_path, fm_backend="vllm", fm_url=gateway, fm_key="fm-key", improver_ray="never"
    )
    report = run_round(task, store, registry, settings, sources=("rule", "prompt"))
    assert report.outcome in ("promoted", "rejected"), report.reasons
    assert report.foundation["scored"] == 6 and report.foundation["recorded"] == 0

    # The exam's FM answers are the served model's, cached under its name.
    model = served_model_name(Settings())
    scorer = serving_prompt_scorer(task, backend, store, model)
    cached = store.get_scores(scorer.key, gold.texts)
    assert len(cached) == 6
    texts = list(cached)
    np.testing.assert_allclose(
        np.stack([cached[t] for t in texts]), backend.predict_proba(task, texts), atol=1e-5
    )
    # And every prompt LF scored its budget of new texts through the gateway too.
    for lf in task.labeling.prompt_lfs:
        assert len(store.get_scores(prompt_key(task, lf, model), train.texts + gold.texts)) == 3

    # Cached answers need no FM: a gateway that is down is never asked.
    down = Settings(home=tmp_path, fm_url=f"http://127.0.0.1:{free_port()}")
    again = foundation_answers(task, store, texts, lazy_backend(down), 6, model)
    assert (again.cached, again.scored) == (6, 0)


def test_protege_up_gives_the_improver_a_key_of_its_own_to_ask_the_fm(tmp_path):
    from protege.stack import LocalStack, settings_env

    settings = Settings(home=tmp_path, api_keys="ops:admin-key=admin")
    stack = LocalStack(settings, improver_args=[], say=lambda line: None)
    stack._give_improver_a_key()
    key = stack.settings.fm_key.get_secret_value()
    identity = ApiKeys.from_settings(stack.settings).identify(key)
    assert identity.has("foundation") and not identity.has("predict")
    assert ApiKeys.from_settings(stack.settings).identify("admin-key").has("admin")  # kept
    assert settings_env(stack.settings)["PROTEGE_FM_KEY"] == key  # the improver's environment

    given = LocalStack(
        Settings(home=tmp_path, api_keys="ops:admin-key=admin", fm_key="mine"), improver_args=[]
    )
    given._give_improver_a_key()
    assert given.settings.api_keys == settings.api_keys  # an operator's key is used as is
    open_stack = LocalStack(Settings(home=tmp_path, auth_disabled=True), improver_args=[])
    open_stack._give_improver_a_key()
    assert open_stack.settings.fm_key is None  # auth off: no key needed


def test_the_serve_deployment_scores_by_prompt_lf_name_batched_per_prompt(
    serving_app, backend, tasks
):
    """Through Ray Serve: the gateway's HandleFoundation, the FoundationModel deployment
    resolving the name from its own task specs; concurrent texts of two prompts batch apart."""
    task = tasks["youtube-spam"]
    lf = task.labeling.prompt_lfs[-1]
    remote = RemoteFoundation.from_settings(serving_app.settings)  # the app's improver key
    assert remote.url == serving_app.url.rstrip("/")
    results: dict[str, np.ndarray] = {}
    threads = [
        threading.Thread(
            target=lambda: results.update(task_prompt=remote.predict_proba(task, TEXTS))
        ),
        threading.Thread(
            target=lambda: results.update(
                lf=remote.predict_proba(task, TEXTS, prompt=lf.as_prompt())
            )
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    np.testing.assert_allclose(
        results["task_prompt"], backend.predict_proba(task, TEXTS), atol=1e-5
    )
    np.testing.assert_allclose(
        results["lf"], backend.predict_proba(task, TEXTS, lf.as_prompt()), atol=1e-5
    )
    assert remote.ref == backend.ref
    with httpx.Client(base_url=serving_app.url, timeout=60) as http:
        body = {"task": task.name, "texts": ["hi"], "adapter": "lora-7"}
        headers = {"Authorization": "Bearer improver-key"}
        answer = http.post("/v1/foundation/score", json=body, headers=headers)
    assert answer.status_code == 404 and "lora-7" in answer.json()["detail"], answer.text
