"""The model registry on MLflow, against SQLite and the real Postgres: runs, versions,
aliases, promote / rollback / reject events, downloads for serving, and the CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from protege import cli
from protege.artifact import Specialist, SpecialistLoadError
from protege.improver.training import TrainingSet, tfidf
from protege.registry import CHALLENGER, CHAMPION, Registry, RegistryError
from protege.schemas import ModelAction
from protege.settings import Settings
from protege.taskspec import TrainingSpec

LABELS = ["HAM", "SPAM"]
POSTGRES = "postgresql://postgres@127.0.0.1:5432"  # .ci/run starts the machine's Postgres


@pytest.fixture(scope="module")
def specialist_folder(tmp_path_factory) -> Path:
    data = TrainingSet.from_gold(
        LABELS,
        [
            "great song",
            "love this video",
            "check out my channel",
            "subscribe to me",
            "beautiful voice",
            "free gift cards at my site",
        ],
        [0, 0, 1, 1, 0, 1],
    )
    files = tfidf.train(data, TrainingSpec(), progress=False)
    return files.write(
        tmp_path_factory.mktemp("spec") / "candidate",
        task="youtube-spam",
        labels=LABELS,
        version="candidate",
    )


@pytest.fixture(scope="module")
def postgres_uri():
    """A fresh database on the local Postgres, dropped afterwards."""
    import psycopg

    name = f"protege_mlflow_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{POSTGRES}/test", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{POSTGRES.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating its tables takes seconds); each test
    isolates itself with a task name of its own."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def task() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request, tmp_path) -> Registry:
    uri = request.getfixturevalue(f"{request.param}_uri")
    return Registry(uri, (tmp_path / "artifacts").as_uri(), tmp_path / "cache")


@pytest.fixture
def sqlite_registry(sqlite_uri, tmp_path) -> Registry:
    return Registry(sqlite_uri, (tmp_path / "artifacts").as_uri(), tmp_path / "cache")


def test_promote_rollback_list_and_download(task, registry, specialist_folder):
    events = []
    v1 = registry.log_candidate(
        task,
        specialist_folder,
        params={"seed": 0},
        metrics={"accuracy": 0.90},
        lf_report={"keyword_subscribe": {"coverage": 0.12}},
        label_model="majority",
    )
    assert registry.alias_version(task, CHALLENGER) == v1
    assert registry.alias_version(task, CHAMPION) is None
    first = registry.promote(task, publish=events.append)  # the challenger by default
    assert (first.action, first.model.version, first.model.model) == (
        ModelAction.promoted,
        v1,
        "tfidf-lr",
    )
    assert first.metrics["accuracy"] == pytest.approx(0.90)

    v2 = registry.log_candidate(task, specialist_folder, metrics={"accuracy": 0.95})
    registry.promote(task, v2, reasons=["passed the gate"], publish=events.append)
    listing = {info.version: info for info in registry.list(task)}
    assert listing[v2].aliases == [CHAMPION]  # the challenger alias moved on with it
    assert listing[v2].metrics["accuracy"] == pytest.approx(0.95)
    assert list(listing) == [v2, v1]

    back = registry.rollback(task, publish=events.append)  # to the previous champion
    assert (back.action, back.model.version) == (ModelAction.rolled_back, v1)
    assert registry.alias_version(task, CHAMPION) == v1
    assert [e.action for e in events] == [
        ModelAction.promoted,
        ModelAction.promoted,
        ModelAction.rolled_back,
    ]
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback(task)
    registry.rollback(task, v2)  # an explicit version rolls forward again
    assert registry.alias_version(task, CHAMPION) == v2

    folder = registry.download(task)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["version"] == v2  # the served model names itself as the registry does
    assert Specialist(folder, LABELS).predict_proba(["subscribe to my channel"]).shape == (1, 2)
    assert registry.download(task) == folder  # cached: versions are immutable


def test_a_run_records_params_lf_report_label_model_and_metrics(
    task, sqlite_registry, specialist_folder, tmp_path
):
    report = {"keyword_subscribe": {"coverage": np.float64(0.12), "votes": np.array([1, 2])}}
    version = sqlite_registry.log_candidate(
        task,
        specialist_folder,
        params={"seed": 3, "families": "tfidf,minilm"},
        metrics={"accuracy": 0.9, "recall.HAM": 1.0, "recall.what?": 0.5, "skipped": None},
        lf_report=report,
        label_model={"name": "snorkel", "epochs": 500},
    )
    client = sqlite_registry.client
    run = client.get_run(client.get_model_version(f"protege-{task}", version).run_id)
    assert run.data.params["seed"] == "3"
    assert run.data.params["label_model"] == "snorkel"
    assert run.data.params["model"] == "tfidf-lr"
    assert run.data.metrics["recall.what_"] == 0.5
    assert "skipped" not in run.data.metrics
    lf = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "lf_report.json", str(tmp_path))
        ).read_text()
    )
    assert lf == {"keyword_subscribe": {"coverage": 0.12, "votes": [1, 2]}}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "specialist")}
    assert artifacts == {"specialist/model.onnx", "specialist/model.json"}


def test_reject_records_reasons_and_leaves_the_champion(task, sqlite_registry, specialist_folder):
    v1 = sqlite_registry.log_candidate(task, specialist_folder)
    sqlite_registry.promote(task, v1)
    v2 = sqlite_registry.log_candidate(task, specialist_folder, metrics={"accuracy": 0.5})
    event = sqlite_registry.reject(task, v2, ["accuracy 0.5 is below the minimum 0.8"])
    assert event.action == ModelAction.rejected and event.reasons
    assert sqlite_registry.alias_version(task, CHAMPION) == v1
    statuses = {i.version: i.status for i in sqlite_registry.list(task)}
    assert statuses == {v1: "promoted", v2: "rejected"}


def test_a_corrupt_onnx_champion_downloads_but_fails_to_load(
    task, sqlite_registry, specialist_folder, tmp_path
):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.json").write_text((specialist_folder / "model.json").read_text())
    (corrupt / "model.onnx").write_bytes((specialist_folder / "model.onnx").read_bytes()[:500])
    version = sqlite_registry.log_candidate(task, corrupt)
    sqlite_registry.promote(task, version)
    folder = sqlite_registry.download(task)
    with pytest.raises(SpecialistLoadError, match="model.onnx"):
        Specialist(folder, LABELS)


def test_unknown_alias_and_version_are_registry_errors(task, sqlite_registry, specialist_folder):
    with pytest.raises(RegistryError, match="no model has alias"):
        sqlite_registry.download(task)
    sqlite_registry.log_candidate(task, specialist_folder)
    with pytest.raises(RegistryError, match="no version 42"):
        sqlite_registry.promote(task, "42")
    assert sqlite_registry.list("no-such-task") == []


def test_the_default_store_is_sqlite_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("PROTEGE_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PROTEGE_MLFLOW_ARTIFACT_ROOT", raising=False)
    settings = Settings(home=tmp_path)
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.mlflow_artifact_root == (tmp_path / "mlartifacts").as_uri()
    production = Settings(home=tmp_path, mlflow_tracking_uri="http://mlflow:5000")
    assert production.mlflow_artifact_root is None  # the tracking server decides


def test_models_cli_lists_promotes_and_rolls_back(
    task, sqlite_uri, specialist_folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path))
    monkeypatch.setenv("PROTEGE_MLFLOW_TRACKING_URI", sqlite_uri)
    monkeypatch.delenv("PROTEGE_KAFKA_BOOTSTRAP", raising=False)
    registry = Registry.from_settings(Settings())
    v1 = registry.log_candidate(task, specialist_folder, metrics={"accuracy": 0.91})
    v2 = registry.log_candidate(task, specialist_folder, metrics={"accuracy": 0.93})

    assert cli.main(["models", "promote", task, v1]) == 0
    assert cli.main(["models", "promote", task]) == 0  # the challenger: v2
    assert registry.alias_version(task, CHAMPION) == v2
    assert cli.main(["models", "rollback", task, "--reason", "bad canary"]) == 0
    assert registry.alias_version(task, CHAMPION) == v1
    capsys.readouterr()
    assert cli.main(["models", "list", task]) == 0
    out = capsys.readouterr().out
    assert "champion" in out and "0.9100" in out and "0.9300" in out
    assert cli.main(["models", "list", task, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == [v2, v1]
    assert cli.main(["models", "promote", task, "99"]) == 1
    assert "no version 99" in capsys.readouterr().err
