"""The real Ray Serve app over real HTTP: the gateway with an in-process ONNX
specialist for youtube-spam, the SmolLM2 foundation model, auth on."""

import httpx
import numpy as np
import pytest

from protege import datasets


@pytest.fixture(scope="module")
def client(serving_app):
    with httpx.Client(base_url=serving_app.url, timeout=120) as c:
        yield c


def as_(role: str) -> dict:
    return {"Authorization": f"Bearer {role}-key"}


def predict(client, task, body, role="predict", **kw):
    return client.post(f"/v1/tasks/{task}/predict", json=body, headers=as_(role), **kw)


# ---------------------------------------------------------------- predictions


def test_youtube_prediction_has_every_field(client):
    response = predict(
        client, "youtube-spam", {"text": "Subscribe to my channel!! http://bit.ly/x"}
    )
    assert response.status_code == 200, response.text
    (item,) = response.json()["predictions"]
    assert item["label"] == "SPAM" and item["route"] == "specialist"
    assert item["served_by"] == {"model": "tfidf-lr", "version": "7"}
    assert item["confidence"] == item["probabilities"][0]["probability"] > 0.8
    assert {p["label"] for p in item["probabilities"]} == {"HAM", "SPAM"}
    assert item["prediction_id"].startswith("youtube-spam.") and item["latency_ms"] > 0


def test_cascade_escalates_exactly_the_unconfident_texts(serving_app, client):
    specialist = serving_app.specialist
    test = datasets.load("youtube-spam", "test")
    confidence = specialist.predict_proba(test.texts).max(axis=1)
    unsure = [test.texts[i] for i in np.argsort(confidence)[:3]]
    sure = [test.texts[i] for i in np.argsort(-confidence)[:3]]
    assert specialist.predict_proba(unsure).max(axis=1).max() < 0.8  # the task's threshold
    response = predict(client, "youtube-spam", {"texts": sure + unsure})
    assert response.status_code == 200, response.text
    items = response.json()["predictions"]
    assert [i["route"] for i in items] == ["specialist"] * 3 + ["escalated"] * 3
    assert {i["served_by"]["model"] for i in items[:3]} == {"tfidf-lr"}
    assert {i["served_by"]["model"] for i in items[3:]} == {"smollm2-135m-instruct"}


def test_task_without_specialist_goes_to_the_foundation_model(client):
    response = predict(client, "banking77", {"text": "My card has not arrived yet"})
    assert response.status_code == 200, response.text
    (item,) = response.json()["predictions"]
    assert item["route"] == "foundation" and item["served_by"]["model"] == "smollm2-135m-instruct"
    assert len(item["probabilities"]) == 5  # the task's top_k


def test_task_listing_shows_policy_and_current_models(client):
    tasks = client.get("/v1/tasks", headers=as_("predict")).json()
    assert [t["name"] for t in tasks] == ["youtube-spam", "banking77", "review-sentiment"]
    youtube = client.get("/v1/tasks/youtube-spam", headers=as_("predict")).json()
    assert youtube["policy"] == "cascade" and youtube["threshold"] == 0.8
    assert youtube["threshold_source"] == "configured"  # v7 carries no calibrated threshold
    assert youtube["models"]["specialist"] == {"model": "tfidf-lr", "version": "7"}
    assert len(tasks[1]["labels"]) == 77 and tasks[1]["models"]["specialist"] is None


def test_health_readiness_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True
    assert ready["tasks"]["youtube-spam"]["specialist"]["version"] == "7"
    assert client.get("/docs").status_code == 200
    assert "/v1/tasks/{task}/predict" in client.get("/openapi.json").json()["paths"]


# ---------------------------------------------------------------- feedback


def test_feedback_on_a_real_prediction_is_accepted(client):
    pid = predict(client, "youtube-spam", {"text": "nice song"}).json()["predictions"][0][
        "prediction_id"
    ]
    response = client.post(
        "/v1/feedback",
        headers=as_("feedback"),
        json={
            "prediction_id": pid,
            "verdict": "down",
            "label": "SPAM",
            "reviewer": "ana",
            "comment": "ad",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["task"] == "youtube-spam" and response.json()["accepted"] is True


def test_a_feedback_key_cannot_post_as_another_reviewer(client):
    pid = predict(client, "youtube-spam", {"text": "nice song"}).json()["predictions"][0][
        "prediction_id"
    ]
    body = {"prediction_id": pid, "verdict": "up"}
    impostor = client.post(
        "/v1/feedback", headers=as_("feedback"), json={**body, "reviewer": "bea"}
    )
    assert impostor.status_code == 403 and "'ana'" in impostor.json()["detail"]
    assert client.post("/v1/feedback", headers=as_("feedback"), json=body).status_code == 200


def test_feedback_on_forged_id_is_404(client):
    pid = predict(client, "youtube-spam", {"text": "nice song"}).json()["predictions"][0][
        "prediction_id"
    ]
    forged = pid[:-4] + ("AAAA" if not pid.endswith("AAAA") else "BBBB")
    for bad in (forged, "youtube-spam.123.abc", "nonsense"):
        response = client.post(
            "/v1/feedback",
            headers=as_("feedback"),
            json={"prediction_id": bad, "verdict": "up", "reviewer": "ana"},
        )
        assert response.status_code == 404, bad


def test_feedback_label_not_in_task_is_422(client):
    pid = predict(client, "youtube-spam", {"text": "nice song"}).json()["predictions"][0][
        "prediction_id"
    ]
    response = client.post(
        "/v1/feedback",
        headers=as_("feedback"),
        json={"prediction_id": pid, "verdict": "down", "label": "card_arrival", "reviewer": "ana"},
    )
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "label"]


# ---------------------------------------------------------------- auth


def test_no_key_is_401_and_wrong_role_is_403(client):
    body = {"text": "hello"}
    assert client.post("/v1/tasks/youtube-spam/predict", json=body).status_code == 401
    assert predict(client, "youtube-spam", body, role="wrong").status_code == 401
    assert predict(client, "youtube-spam", body, role="feedback").status_code == 403
    assert predict(client, "youtube-spam", body, role="admin").status_code == 200
    feedback = {"prediction_id": "x", "verdict": "up", "reviewer": "r"}
    assert client.post("/v1/feedback", json=feedback, headers=as_("predict")).status_code == 403
    assert (
        client.post(
            "/v1/tasks/youtube-spam/predict", json=body, headers={"X-API-Key": "predict-key"}
        ).status_code
        == 200
    )


# ---------------------------------------------------------------- bad input


def assert_422_naming(response, *loc):
    assert response.status_code == 422, response.text
    locs = [tuple(e["loc"]) for e in response.json()["detail"]]
    assert any(found[: len(loc)] == loc for found in locs), locs


def test_unknown_task_is_404(client):
    response = predict(client, "no-such-task", {"text": "hi"})
    assert response.status_code == 404 and "no-such-task" in response.json()["detail"]


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_or_blank_text_is_422(client, text):
    assert_422_naming(predict(client, "youtube-spam", {"text": text}), "body", "text")
    assert_422_naming(predict(client, "youtube-spam", {"texts": ["ok", text]}), "body", "texts")


def test_text_over_the_limit_is_422(client):
    assert_422_naming(predict(client, "youtube-spam", {"text": "a" * 2001}), "body", "text")
    assert_422_naming(
        predict(client, "banking77", {"texts": ["ok", "b" * 1001]}), "body", "texts", 1
    )


def test_batch_over_the_limit_is_422(client):
    assert_422_naming(predict(client, "youtube-spam", {"texts": ["hi"] * 65}), "body", "texts")
    assert_422_naming(predict(client, "youtube-spam", {"texts": []}), "body", "texts")


def test_wrong_types_are_422(client):
    assert_422_naming(predict(client, "youtube-spam", {"text": 42}), "body", "text")
    assert_422_naming(predict(client, "youtube-spam", {"texts": "not a list"}), "body", "texts")
    assert_422_naming(predict(client, "youtube-spam", {"text": "a", "texts": ["b"]}), "body")
    assert_422_naming(predict(client, "youtube-spam", {}), "body")
    response = client.post(
        "/v1/feedback",
        headers=as_("feedback"),
        json={"prediction_id": "x", "verdict": "maybe", "reviewer": "r"},
    )
    assert_422_naming(response, "body", "verdict")


def test_unknown_fields_are_422(client):
    assert_422_naming(
        predict(client, "youtube-spam", {"text": "hi", "temperature": 0}), "body", "temperature"
    )


def test_malformed_json_is_422(client):
    response = client.post(
        "/v1/tasks/youtube-spam/predict",
        content=b'{"text": "hi"',
        headers={**as_("predict"), "Content-Type": "application/json"},
    )
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"


def test_body_that_is_not_utf8_is_400(client):
    response = client.post(
        "/v1/tasks/youtube-spam/predict",
        content=b'{"text": "caf\xe9"}',
        headers={**as_("predict"), "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and "UTF-8" in response.json()["detail"]


# ---------------------------------------------------------------- metrics


def test_prometheus_metrics_count_predictions_by_task_route_and_model(serving_app, client):
    import time

    for _ in range(3):
        predict(client, "youtube-spam", {"text": "Subscribe to my channel!! http://bit.ly/x"})

    def counted(text: str) -> list[str]:
        """This task's specialist-route counter lines holding all three predictions."""
        lines = [
            line
            for line in text.splitlines()
            if line.startswith("ray_protege_predictions") and 'task="youtube-spam"' in line
        ]
        return [
            line
            for line in lines
            if 'route="specialist"' in line
            and 'model="tfidf-lr"' in line
            and float(line.rsplit(" ", 1)[1]) >= 3
        ]

    # Ray exports metrics every few seconds: an export may catch the first of the three.
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{serving_app.metrics_port}/metrics", timeout=10).text
        if counted(text) and "protege_predict_latency_ms" in text:
            break
        time.sleep(1)
    assert counted(text), [line for line in text.splitlines() if "protege_predictions" in line]
    assert "ray_protege_predict_latency_ms_bucket" in text
