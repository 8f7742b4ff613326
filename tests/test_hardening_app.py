"""Issue 15 through the real Ray Serve app: secrets reach the replicas only through
their environment (the Kafka client authenticates with the real password; no secret
in Serve's config, the runtime_env or Ray's logs), bodies past the limit are cut off
while they stream, keys over their rate and reviewers over their quota get 429,
overload is shed with 503, the first start's printed curl works, and schemathesis
fuzzes the live OpenAPI: no 5xx, every negative case a 4xx, responses per schema."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from kafka_sasl_listener import SaslRecorder
from protege import datasets
from protege.events.broker import free_port
from protege.serving.keyfiles import add_key, first_admin_key
from protege.settings import Settings
from protege.taskspec import DEFAULT_TASKS_FILE
from specialist_builder import build_youtube_specialist

SASL_PASSWORD = "sasl-pw-7f3a9c21"
SIGNING_SECRET = "signing-secret-5b2e8d40-of-32-bytes"
OPENAI_KEY = "sk-openai-9d1c4e77"
MAX_BODY = 256 * 1024
FUZZ_EXAMPLES = 50  # per operation and phase: bounded, so that make test stays short


def tasks_file(folder: Path) -> Path:
    """youtube-spam alone, answered by its specialist (no FM on the fuzzed path: a CPU
    FM would make each random batch take seconds)."""
    raw = yaml.safe_load(DEFAULT_TASKS_FILE.read_text(encoding="utf-8"))
    (task,) = [t for t in raw["tasks"] if t["name"] == "youtube-spam"]
    task["routing"] = {"policy": "specialist-only", "shadow_rate": 0.0}
    path = folder / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": [task]}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from dataclasses import dataclass

    from protege.serving.launch import start_serve, stop_serve

    @dataclass
    class App:
        url: str
        settings: Settings
        keys: dict[str, str]
        recorder: SaslRecorder
        session_dir: Path

    home = tmp_path_factory.mktemp("hardened-home")
    build_youtube_specialist(home / "models" / "youtube-spam" / "current", version="7")
    for name in [n for n in os.environ if n.startswith("PROTEGE_")]:
        assert name not in ("PROTEGE_API_KEYS", "PROTEGE_API_KEYS_FILE"), name
    # A first start: no keys configured, so an admin key is made (shown once).
    first, admin_key = first_admin_key(Settings(home=home))
    keys_file = first.api_keys_file
    keys = {
        "admin": admin_key,
        "app": add_key(keys_file, "app", {"predict"}),
        "slow": add_key(keys_file, "slow", {"predict"}, rate_per_s=0.5, rate_burst=1),
        "bea": add_key(keys_file, "bea", {"feedback"}, feedback_per_hour=2),
    }
    # The improver's API behind the gateway's review queue: its own home, no Kafka.
    from protege.improver.service import ImproverService

    improver = ImproverService(
        Settings(home=home / "improver", tasks_file=tasks_file(home), improver_port=free_port()),
        registry=object(),
        publish=lambda event: None,
        ingest=False,
    ).start()
    recorder = SaslRecorder()
    settings = Settings(
        home=home,
        improver_url=f"http://127.0.0.1:{improver.settings.improver_port}",
        http_port=free_port(),
        tasks_file=tasks_file(home),
        api_keys_file=keys_file,
        signing_secret=SIGNING_SECRET,
        openai_api_key=OPENAI_KEY,
        kafka_bootstrap=recorder.bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="protege",
        kafka_sasl_password=SASL_PASSWORD,
        kafka_ack_timeout_s=1.0,
        kafka_reconnect_max_s=1.0,
        max_body_bytes=MAX_BODY,
        max_ongoing_requests=2,
        max_queued_requests=2,
        retry_after_s=2.0,
        model_poll_s=5.0,
    )
    url = start_serve(settings, app_name="protege-hardened")
    import ray

    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    yield App(url, settings, keys, recorder, session_dir)
    stop_serve()
    improver.stop(timeout=5)
    recorder.close()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------- secrets


def test_the_event_producer_authenticates_with_the_real_password(app):
    deadline = time.monotonic() + 60
    while not app.recorder.credentials and time.monotonic() < deadline:
        time.sleep(0.5)
    assert app.recorder.credentials, "no Kafka client tried to authenticate"
    assert set(app.recorder.credentials) == {("protege", SASL_PASSWORD)}


def test_no_secret_in_serve_config_runtime_env_or_logs(app):
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    secrets = [SASL_PASSWORD, SIGNING_SECRET, OPENAI_KEY, *app.keys.values()]
    details = json.dumps(_get_global_client().get_serve_details(), default=str)
    status = str(serve.status())
    runtime_env = json.dumps(ray.get_runtime_context().runtime_env, default=str)
    assert "protege-hardened" in details and "Gateway" in details  # the real config
    logs = [p for p in (app.session_dir / "logs").rglob("*") if p.is_file()]
    assert any("Gateway" in p.name for p in logs)  # the replicas' own logs are there
    for secret in secrets:
        assert secret not in details and secret not in status and secret not in runtime_env
        for path in logs:
            assert secret.encode() not in path.read_bytes(), f"{secret[:6]}… in {path}"


# ---------------------------------------------------------------- limits


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(app):
    host, port = app.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                "POST /v1/tasks/youtube-spam/predict HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {app.keys['app']}\r\n"
                "Content-Type: application/json\r\nContent-Length: 5000000000\r\n\r\n"
            ).encode()
        )
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head[:200]


def test_a_chunked_body_is_cut_off_near_the_limit(app):
    """A body with no length, sent in 64 KiB chunks: the 413 comes while it streams,
    long before the 64 MiB the client would send."""
    host, port = app.url.removeprefix("http://").split(":")
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                "POST /v1/tasks/youtube-spam/predict HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {app.keys['app']}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        sock.settimeout(0.05)
        head = b""
        while sent < 64 << 20:
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:  # the server closed after answering
                break
            sent += len(chunk)
            try:
                head = sock.recv(4096)
                if head:
                    break
            except TimeoutError:
                continue
        sock.settimeout(10)
        head = head or sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert sent < 16 << 20, f"{sent} bytes sent before the answer"


def test_a_key_over_its_rate_gets_429_with_retry_after(app):
    with httpx.Client(base_url=app.url, timeout=30, headers=bearer(app.keys["slow"])) as client:
        statuses = [client.get("/v1/tasks").status_code for _ in range(3)]
        refused = client.get("/v1/tasks")
    assert statuses[0] == 200 and 429 in statuses
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
    with httpx.Client(base_url=app.url, timeout=30, headers=bearer(app.keys["app"])) as client:
        assert client.get("/v1/tasks").status_code == 200  # other keys are not slowed


def test_a_reviewer_over_the_hourly_quota_gets_429(app):
    with httpx.Client(base_url=app.url, timeout=30) as client:
        response = client.post(
            "/v1/tasks/youtube-spam/predict",
            json={"texts": ["subscribe to my channel", "great song", "love it"]},
            headers=bearer(app.keys["app"]),
        )
        ids = [p["prediction_id"] for p in response.json()["predictions"]]
        answers = [
            client.post(
                "/v1/feedback",
                json={"prediction_id": pid, "verdict": "up"},
                headers=bearer(app.keys["bea"]),
            )
            for pid in ids
        ]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert int(answers[2].headers["Retry-After"]) > 1000  # two an hour: half an hour


def test_overload_is_shed_with_503_and_retry_after(app):
    texts = [t[:2000] for t in datasets.load("youtube-spam", "train").texts[:64]]
    texts = [(t * (2000 // len(t) + 1))[:2000] for t in texts]  # 64 long texts
    barrier = threading.Barrier(24)
    answers: list[httpx.Response] = []

    def call():
        with httpx.Client(base_url=app.url, timeout=120) as client:
            barrier.wait()
            answers.append(
                client.post(
                    "/v1/tasks/youtube-spam/predict",
                    json={"texts": texts},
                    headers=bearer(app.keys["admin"]),
                )
            )

    threads = [threading.Thread(target=call) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= 2
    assert all(a.headers.get("retry-after") == "2" for a in answers if a.status_code == 503)


# ---------------------------------------------------------------- the first start


def test_the_printed_curl_works_as_printed(app):
    from protege.commands.up import keys_note
    from protege.stack import curl_examples

    settings = app.settings
    printed = keys_note(settings, app.keys["admin"]) + curl_examples(
        app.url, False, app.keys["admin"]
    )
    assert (
        app.keys["admin"] in printed and "protege keys create --name NAME --role predict" in printed
    )
    # The youtube-spam command, as printed (a line and its continuation).
    lines = curl_examples(app.url, False, app.keys["admin"]).splitlines()
    command = "\n".join(lines[:2])
    assert "/v1/tasks/youtube-spam/predict" in command
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["predictions"][0]["label"] in ("HAM", "SPAM")


# ---------------------------------------------------------------- fuzzing


def test_schemathesis_finds_no_5xx_and_every_negative_case_is_a_4xx(app, tmp_path):
    report = tmp_path / "schemathesis.ndjson"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{app.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {app.keys['admin']}",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,negative_data_rejection",
            "--mode",
            "all",
            "--max-examples",
            str(FUZZ_EXAMPLES),
            "--seed",
            "15",
            "--workers",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-database",
            "none",
            "--request-timeout",
            "60",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
    )
    summary = done.stdout[-4000:]
    print(summary)
    assert done.returncode == 0, summary
    generated = re.search(r"(\d+) generated", summary)
    assert generated and int(generated.group(1)) >= 11 * FUZZ_EXAMPLES // 2, summary
