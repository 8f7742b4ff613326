"""FM adapters through the real Ray Serve app (the FoundationModel deployment resolves
the adapter's name from the registry; the gateway's ChampionWatcher swaps it in), the
real HTTP API and MLflow on SQLite: promoted, a task's escalations are the adapter's;
another task keeps the base model; a rollback to an ONNX version stops using it.

Needs the transformers backend's adapter scoring (branch `lora`)."""

from __future__ import annotations

import time

import httpx
import pytest

from adapter_builder import build_adapter
from protege.artifact import adapter_name, update_meta
from protege.registry import Registry
from specialist_builder import build_youtube_specialist

TASK = "youtube-spam"
PREDICT = {"Authorization": "Bearer predict-key"}
ADAPTER = {"model": adapter_name(TASK, "2"), "version": "2"}


@pytest.fixture(scope="module")
def registry(serving_app, tmp_path_factory) -> Registry:
    """Version 1: an ONNX specialist whose threshold escalates every text; version 2:
    an adapter. The app's watcher may be creating the SQLite tables at this moment,
    so the first write is retried."""
    built = tmp_path_factory.mktemp("built")
    onnx = build_youtube_specialist(built / "onnx", per_label=10)
    update_meta(onnx, threshold=1.0)
    lora = build_adapter(built / "lora", TASK, ["HAM", "SPAM"])
    for attempt in range(10):
        try:
            registry = Registry.from_settings(serving_app.settings)
            assert registry.log_candidate(TASK, onnx) == "1"
            break
        except Exception:  # sqlalchemy's OperationalError from MLflow's migration
            if attempt == 9:
                raise
            time.sleep(1.0)
    assert registry.log_candidate(TASK, lora) == "2"
    return registry


@pytest.fixture(scope="module")
def client(serving_app):
    with httpx.Client(base_url=serving_app.url, timeout=120) as c:
        yield c


def predict(client, task: str, text: str = "hmm ok") -> dict:
    response = client.post(f"/v1/tasks/{task}/predict", json={"text": text}, headers=PREDICT)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def task_models(client) -> dict:
    tasks = client.get("/v1/tasks", headers=PREDICT).json()
    return {t["name"]: t["models"] for t in tasks}


def wait_for(condition, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_promoted_adapter_answers_escalations_until_a_rollback(client, registry):
    registry.promote(TASK, "1")
    wait_for(lambda: task_models(client)[TASK]["specialist"]["version"] == "1", "ONNX v1")
    before = predict(client, TASK)
    base = before["served_by"]
    assert before["route"] == "escalated" and base["model"] != ADAPTER["model"]

    registry.promote(TASK, "2")
    wait_for(lambda: task_models(client)[TASK]["adapter"] is not None, "the adapter")
    assert task_models(client)[TASK]["adapter"]["name"] == ADAPTER["model"]
    ready = client.get("/readyz").json()
    assert ready["tasks"][TASK]["adapter"]["version"] == "2"
    adapted = predict(client, TASK)
    assert adapted["route"] == "escalated" and adapted["served_by"] == ADAPTER
    assert adapted["confidence"] != pytest.approx(before["confidence"], abs=1e-3)
    other = predict(client, "banking77", "my card has not arrived")
    assert other["route"] == "foundation" and other["served_by"] == base

    registry.rollback(TASK)
    wait_for(lambda: task_models(client)[TASK]["adapter"] is None, "the rollback")
    after = predict(client, TASK)
    assert after["served_by"] == base
    assert after["confidence"] == pytest.approx(before["confidence"], abs=1e-5)


def test_an_unknown_adapter_fails_its_own_calls_only(serving_app, registry):
    """Straight to the FoundationModel deployment: calls batched together, one of them
    for a name the registry cannot resolve."""
    from ray import serve

    handle = serve.get_deployment_handle("FoundationModel", "protege-test")
    unknown = handle.score.remote(TASK, "hmm ok", adapter=adapter_name(TASK, "9"))
    onnx = handle.score.remote(TASK, "hmm ok", adapter=adapter_name(TASK, "1"))
    base = handle.score.remote(TASK, "hmm ok")
    adapted = handle.score.remote(TASK, "hmm ok", adapter=ADAPTER["model"])
    assert len(base.result(timeout_s=60)) == 2 and len(adapted.result(timeout_s=60)) == 2
    assert base.result() != adapted.result()
    with pytest.raises(Exception, match="no version 9"):
        unknown.result(timeout_s=60)
    with pytest.raises(Exception, match="not an fm-adapter"):
        onnx.result(timeout_s=60)
