"""Training as Ray jobs on a real local Ray (its dashboard's Jobs API; real subprocess
jobs): a round trains through a job and promotes; `protege jobs` and /v1/admin/jobs show,
read and stop jobs; a stopped job or one past its deadline fails the round, frees its
lease and leaves the champion serving."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pytest

from protege import datasets
from protege.artifact import SpecialistFiles
from protege.cli import main as cli
from protege.events.broker import free_port
from protege.improver.data.gold import task_split
from protege.improver.data.ledger import RoundLedger
from protege.improver.data.store import ExampleStore
from protege.improver.loop import RoundReport, run_round
from protege.improver.training import TrainingSet
from protege.improver.training.distill import Candidate
from protege.improver.training.exchange import (
    ExchangeError,
    JobInput,
    read_candidate,
    read_input,
    write_candidate,
    write_input,
)
from protege.improver.training.jobs import should_use_ray
from protege.jobs import free_cpus
from protege.registry import CHAMPION, Registry
from protege.schemas import LabelProbability, ModelRef, PredictionEvent, Route
from protege.serving.api import build_api
from protege.serving.auth import ApiKeys
from protege.serving.foundation_client import HandleFoundation
from protege.serving.gateway import GatewayCore
from protege.serving.prediction_ids import PredictionIds
from protege.serving.specialists import SpecialistSlots
from protege.settings import Settings
from protege.taskspec import DEFAULT_TASKS_FILE, TrainingSpec, load_tasks
from ray_cluster import Cluster

TASK = "youtube-spam"
SOURCES = ("rule", "python")  # no prompt LFs: the FM is never loaded
ADMIN = {"Authorization": "Bearer admin-key"}


@pytest.fixture(scope="module")
def cluster():
    ray = Cluster(dashboard_port=free_port(), num_cpus=2)
    yield ray
    ray.delete()


@pytest.fixture(scope="module")
def settings(cluster, tmp_path_factory) -> Settings:
    return Settings(
        home=tmp_path_factory.mktemp("home"),
        ray_dashboard_url=cluster.dashboard_url,
        improver_ray="always",
        training_poll_s=0.5,
        api_keys="ana:feedback-key=feedback;ops:admin-key=admin",
        signing_secret="test-secret-of-at-least-16-bytes",
    )


def filled(store: ExampleStore, rows: int | None = None) -> ExampleStore:
    """youtube's train texts (the first `rows`) as served predictions (the LFs label
    them), their exam and calibration buckets' gold imported."""
    task = load_tasks(DEFAULT_TASKS_FILE)[TASK]
    train = datasets.youtube("train")
    texts, labels = train.texts[:rows], train.labels[:rows]
    store.record_many(
        [
            PredictionEvent(
                prediction_id=f"{TASK}.{i}.sig",
                task=TASK,
                text=text,
                label="HAM",
                probabilities=[LabelProbability(label="HAM", probability=0.6)],
                route=Route.specialist,
                served_by=ModelRef(model="m", version="1"),
                latency_ms=1.0,
            )
            for i, text in enumerate(texts)
        ]
    )
    gold = [(t, y) for t, y in zip(texts, labels) if task_split(task, t) != "train"]
    store.import_gold(TASK, gold, source="test")
    return store


@pytest.fixture(scope="module")
def store(settings) -> ExampleStore:
    """All of youtube's train split: enough for a first specialist to be promoted."""
    store = filled(ExampleStore.from_settings(settings))
    yield store
    store.close()


@pytest.fixture(scope="module")
def registry(settings) -> Registry:
    return Registry.from_settings(settings)


def task_with(**training):
    task = load_tasks(DEFAULT_TASKS_FILE)[TASK]
    return task.model_copy(
        update={
            "training": TrainingSpec(**training),
            "retrain": task.retrain.model_copy(update={"fm_eval_max": 0}),
        }
    )


def a_round(task, store, registry, settings, holder: str) -> RoundReport:
    return run_round(task, store, registry, settings, sources=SOURCES, holder=holder)


def admin_app(settings: Settings):
    """The gateway's FastAPI app as a replica builds it (no FM: nothing is predicted here)."""
    tasks = settings.load_tasks()
    core = GatewayCore(
        tasks,
        HandleFoundation(None),
        SpecialistSlots(tasks, settings),
        PredictionIds.from_settings(settings),
    )
    app = build_api(core, ApiKeys.from_settings(settings), None, settings)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://app", headers=ADMIN)


async def admin(settings: Settings, method: str, path: str, **kwargs) -> httpx.Response:
    async with admin_app(settings) as client:
        return await client.request(method, path, **kwargs)


def call(settings: Settings, method: str, path: str, **kwargs) -> httpx.Response:
    return asyncio.run(admin(settings, method, path, **kwargs))


def jobs_cli(monkeypatch, capsys, settings: Settings, *args: str) -> tuple[int, str, str]:
    """`protege jobs ...` as an operator runs it, the dashboard from the environment."""
    monkeypatch.setenv("PROTEGE_RAY_DASHBOARD_URL", settings.ray_dashboard_url)
    monkeypatch.setenv("PROTEGE_HOME", str(settings.home))
    code = cli(["jobs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def in_thread(run) -> Future:
    future: Future = Future()
    threading.Thread(target=lambda: future.set_result(run()), daemon=True).start()
    return future


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} after {timeout_s:.0f} s")


def assert_nothing_changed(store, registry, before_champion, before_versions, report, job_id):
    assert report.outcome == "failed" and report.version is None
    assert job_id in report.reasons[0], report.reasons
    state = RoundLedger.of(store).state(TASK)
    assert state.holder is None and state.outcome == "failed"  # the lease is free
    assert registry.alias_version(TASK, CHAMPION) == before_champion
    assert len(registry.list(TASK)) == before_versions  # nothing registered


def test_a_jobs_input_and_candidate_travel_as_json_and_npz(tmp_path):
    """No pickle: what goes to a job and back is JSON, npz and the specialist's bytes,
    `SpecialistFiles` field by field (a dict of bytes as a folder, nested names too)."""
    train = TrainingSet.build(
        ["HAM", "SPAM"],
        soft_texts=["nice song", "sub to me"],
        soft_probs=[[0.9, 0.1], [0.2, 0.8]],
        gold_texts=["check my channel"],
        gold_labels=["SPAM"],
    )
    spec = TrainingSpec(families=["tfidf"], deadline_s=5)
    kwargs = {"validation": (["a", "b"], np.array([0, 1])), "progress": False}
    write_input(tmp_path / "in", JobInput(TASK, train, spec, kwargs, "/out"))
    job = read_input(tmp_path / "in")
    assert (job.task, job.spec, job.output) == (TASK, spec, "/out")
    assert job.kwargs == {"validation": [["a", "b"], [0, 1]], "progress": False}
    assert job.train.texts == train.texts and np.array_equal(job.train.targets, train.targets)
    assert job.train.gold.tolist() == [False, False, True]

    files = SpecialistFiles(
        "minilm", b"onnx-bytes", {"tokenizer.json": b"{}", "adapter/config.json": b"[]"}, {"c": 1}
    )
    candidate = Candidate(TASK, ["HAM", "SPAM"], "minilm", files, {"minilm": 0.9}, {"minilm": 2.0})
    assert read_candidate(write_candidate(candidate, tmp_path / "out")) == candidate

    np.savez(tmp_path / "in" / "arrays.npz", targets=np.array([object()]))  # needs pickle
    with pytest.raises(ExchangeError):
        read_input(tmp_path / "in")
    head = json.loads((tmp_path / "out" / "candidate.json").read_text())
    head["files"]["bytes"] = ["../../etc/passwd"]
    (tmp_path / "out" / "candidate.json").write_text(json.dumps(head))
    with pytest.raises(ExchangeError, match="unsafe"):
        read_candidate(tmp_path / "out")


def test_a_round_trains_as_a_ray_job_and_promotes(store, registry, settings, monkeypatch, capsys):
    report = a_round(task_with(families=["tfidf"]), store, registry, settings, "job-round")
    assert report.outcome == "promoted", report.reasons
    assert registry.alias_version(TASK, CHAMPION) == report.version
    run = registry.client.get_run(
        registry.client.get_model_version(registry.registered_name(TASK), report.version).run_id
    )
    assert run.data.params["chosen_family"] == "tfidf"

    code, out, _ = jobs_cli(monkeypatch, capsys, settings, "list", "--json")
    assert code == 0
    (job,) = json.loads(out)
    assert job["task"] == TASK and job["status"] == "SUCCEEDED" and job["holder"] == "job-round"
    assert job["round"].endswith("Z") and job["trigger"] == "manual"
    code, out, _ = jobs_cli(monkeypatch, capsys, settings, "list")
    assert code == 0 and job["id"] in out and job["round"] in out and TASK in out
    code, out, _ = jobs_cli(monkeypatch, capsys, settings, "logs", job["id"])
    assert code == 0 and "tfidf candidate written" in out
    # The improver read the candidate back and removed the job's output.
    assert not list(Path(settings.jobs_uri).glob(f"{job['id']}/*"))


def test_a_lora_round_trains_the_fms_adapter_in_its_job_and_is_judged_on_the_exam(
    registry, settings, tmp_path
):
    """The FM's own adapter as a candidate family: trained in the job's process (which
    loads the FM; the improver does not), its exam answers made there, judged and
    registered like any candidate, its base model recorded. A store of 400 texts: the
    job's FM answers every exam and calibration text (~5 a second here)."""
    small = filled(ExampleStore(f"sqlite:///{tmp_path / 'small.db'}"), rows=400)
    lora = task_with(families=["lora"], lora={"steps": 4, "batch_size": 2, "rank": 4})
    report = a_round(lora, small, registry, settings, "lora-round")
    small.close()
    assert report.outcome in ("promoted", "rejected"), report.reasons
    assert report.family == "lora"
    version = registry.client.get_model_version(registry.registered_name(TASK), report.version)
    params = registry.client.get_run(version.run_id).data.params
    assert params["kind"] == "fm-adapter" and params["base_model"]
    exam = report.judgement.candidate.metrics
    assert exam.n == report.data["exam"] and 0.0 <= exam.accuracy <= 1.0


def test_a_family_that_trains_the_fm_never_trains_in_the_improvers_process(
    store, registry, settings
):
    here = settings.model_copy(update={"improver_ray": "never"})
    lora = task_with(families=["tfidf", "lora"], lora={"steps": 2, "batch_size": 2})
    before = len(registry.list(TASK))
    report = a_round(lora, store, registry, here, "lora-here")
    assert report.outcome == "failed"
    assert "TrainingNeedsJob" in report.reasons[0] and "only a training job" in report.reasons[0]
    assert len(registry.list(TASK)) == before
    assert RoundLedger.of(store).state(TASK).holder is None


def test_a_job_stopped_mid_run_fails_the_round_and_the_champion_stays(store, registry, settings):
    before = registry.alias_version(TASK, CHAMPION), len(registry.list(TASK))
    long = task_with(families=["minilm-ft"], finetune_epochs=50, deadline_s=600)
    result = in_thread(lambda: a_round(long, store, registry, settings, "stopped-round"))

    def running() -> dict | None:
        listed = call(settings, "GET", "/v1/admin/jobs", params={"task": TASK}).json()
        return next((j for j in listed if j["holder"] == "stopped-round"), None)

    job = wait_for(running, 300, "job of the round")

    def training() -> httpx.Response | None:
        logs = call(settings, "GET", f"/v1/admin/jobs/{job['id']}/logs")
        return logs if "training minilm-ft" in logs.text else None

    logs = wait_for(training, 300, "training in the job's log")
    assert logs.headers["content-type"].startswith("text/plain")
    stopped = call(settings, "POST", f"/v1/admin/jobs/{job['id']}/stop")
    assert stopped.status_code == 202 and stopped.json()["status"] == "RUNNING"
    report = result.result(timeout=120)
    print(f"\nstopped: {report.reasons[0]}")
    assert_nothing_changed(store, registry, *before, report, job["id"])
    assert "STOPPED" in report.reasons[0]
    assert "training minilm-ft" in report.reasons[0]  # the tail of the job's log
    listed = call(settings, "GET", "/v1/admin/jobs").json()
    assert {j["id"]: j["status"] for j in listed}[job["id"]] == "STOPPED"


def test_a_job_past_its_deadline_is_stopped_and_fails_the_round(store, registry, settings):
    before = registry.alias_version(TASK, CHAMPION), len(registry.list(TASK))
    report = a_round(task_with(families=["tfidf"], deadline_s=1), store, registry, settings, "late")
    (job,) = [j for j in call(settings, "GET", "/v1/admin/jobs").json() if j["holder"] == "late"]
    print(f"\nlate: {report.reasons[0]}")
    assert_nothing_changed(store, registry, *before, report, job["id"])
    assert "past its deadline of 1 s and was stopped; its log ends" in report.reasons[0]
    assert job["status"] == "STOPPED"


def test_unknown_jobs_and_an_absent_job_server_are_clear_errors(settings, monkeypatch, capsys):
    assert call(settings, "GET", "/v1/admin/jobs/no-such-job/logs").status_code == 404
    missing = call(settings, "POST", "/v1/admin/jobs/no-such-job/stop")
    assert missing.status_code == 404 and "no-such-job" in missing.json()["detail"]
    assert call(settings, "GET", "/v1/admin/jobs", headers={"Authorization": ""}).status_code == 401
    reviewer = call(
        settings, "GET", "/v1/admin/jobs", headers={"Authorization": "Bearer feedback-key"}
    )
    assert reviewer.status_code == 403
    code, _, err = jobs_cli(monkeypatch, capsys, settings, "stop", "no-such-job")
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err

    away = settings.model_copy(update={"ray_dashboard_url": f"http://127.0.0.1:{free_port()}"})
    answer = call(away, "GET", "/v1/admin/jobs")
    assert answer.status_code == 503 and "does not answer" in answer.json()["detail"]
    code, _, err = jobs_cli(monkeypatch, capsys, away, "list")
    assert code == 1 and "does not answer" in err and "Traceback" not in err


def test_auto_trains_on_ray_when_its_job_server_answers_with_cpus_to_spare(settings, monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    auto = settings.model_copy(update={"improver_ray": "auto"})
    # Both CPUs free once the earlier jobs' are given back (the status lags a few seconds).
    wait_for(lambda: free_cpus(auto) == 2.0, 120, "two free CPUs in the dashboard's status")
    assert should_use_ray(task_with(num_cpus=1), auto)
    assert not should_use_ray(task_with(num_cpus=3), auto)  # it would wait behind others
    assert should_use_ray(task_with(num_cpus=3, num_gpus=1), auto)  # an autoscaler may add
    away = auto.model_copy(update={"ray_dashboard_url": f"http://127.0.0.1:{free_port()}"})
    assert not should_use_ray(task_with(), away)
    assert not should_use_ray(task_with(), auto.model_copy(update={"ray_dashboard_url": None}))
    assert not should_use_ray(task_with(), settings.model_copy(update={"improver_ray": "never"}))


def test_protege_ups_ray_has_its_dashboard_where_the_settings_say(tmp_path, monkeypatch):
    """`start_ray` (protege up, the demo) starts the dashboard on the settings' loopback
    port; a process connected to that Ray (the Serve driver, which hands it to the
    improver; a gateway replica) finds it without being told."""
    import ray

    from protege.jobs import connected_dashboard, dashboard_url
    from protege.serving.launch import start_ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    url = f"http://127.0.0.1:{free_port()}"
    assert not ray.is_initialized()
    start_ray(Settings(home=tmp_path, ray_dashboard_url=url, improver_ray="auto"))
    try:
        assert connected_dashboard() == url
        assert dashboard_url(Settings(home=tmp_path)) == url
        assert httpx.get(f"{url}/api/version", timeout=30).status_code == 200
    finally:
        ray.shutdown()
    assert connected_dashboard() is None
