"""The `lora` family end to end on the real SmolLM2: a LoRA adapter trained on youtube
comments through the task's prompt, saved as an fm-adapter candidate with its answers,
scored by the transformers backend with the adapter loaded, and judged from its answers.

Small on purpose (CPU): 32 short comments, 12 steps of 4; one training for the module."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError
from safetensors.numpy import load_file

from protege import datasets
from protege.artifact import (
    ADAPTER_DIR,
    ADAPTER_KIND,
    ANSWERS_FILE,
    SpecialistFiles,
    SpecialistLoadError,
    SpecialistMeta,
    is_adapter,
    read_answers,
)
from protege.foundation.backend import Adapter
from protege.foundation.lora import train_adapter
from protege.foundation.transformers_backend import MAX_ADAPTERS
from protege.improver.judge.exam import Exam, FoundationAnswers
from protege.improver.judge.judgement import Champion, judge
from protege.improver.loop import lora_inputs, reviews_only_model
from protege.improver.training import lora
from protege.improver.training.dataset import TrainingSet
from protege.improver.training.distill import Candidate, train_specialist
from protege.improver.training.exchange import read_candidate, write_candidate
from protege.registry import Registry
from protege.settings import Settings
from protege.taskspec import LoraSpec, TaskSpec, TrainingSpec

PER_LABEL = 16
SPEC = TrainingSpec(families=["lora"], lora=LoraSpec(steps=12, batch_size=4, lr=3e-3))


@pytest.fixture(scope="module")
def task():
    return Settings().load_tasks()["youtube-spam"]


@pytest.fixture(scope="module")
def intents():
    """Six banking77 intents, of one to six tokens."""
    task = Settings().load_tasks()["banking77"]
    return task.model_copy(update={"labels": [task.labels[i] for i in (0, 9, 15, 40, 60, 76)]})


@pytest.fixture(scope="module")
def backend():
    """The family's own process-wide FM: what the job trains and answers with."""
    return lora.foundation()


@pytest.fixture(scope="module")
def data(task) -> TrainingSet:
    """The shortest comments of each label (cheap passes), gold as targets."""
    train = datasets.load("youtube-spam", "train")
    texts, labels = [], []
    for label in task.label_names:
        rows = [i for i, y in enumerate(train.labels) if y == label]
        rows.sort(key=lambda i: len(train.texts[i]))
        texts += [train.texts[i] for i in rows[:PER_LABEL]]
        labels += [label] * PER_LABEL
    return TrainingSet.from_gold(task.label_names, texts, labels)


@pytest.fixture(scope="module")
def zero_shot(backend, task, data) -> np.ndarray:
    """The base model's answers on the training texts, before any adapter is loaded."""
    return backend.predict_proba(task, data.texts)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, task, data, zero_shot):
    """The candidate folder that training writes (answers on the training texts)."""
    candidate = train_specialist(
        task.name,
        data,
        SPEC,
        (data.texts[:8], data.targets[:8].argmax(axis=1)),
        progress=False,
        task_spec=task.model_dump(mode="json"),  # as a training job's JSON input has it
        answer_texts=data.texts,
    )
    assert candidate.family == "lora"
    return candidate.write(tmp_path_factory.mktemp("lora") / "candidate", version="1")


@pytest.fixture(scope="module")
def tuned(folder, task, data) -> np.ndarray:
    """The adapter's answers on the training texts, as its job recorded them."""
    return read_answers(folder, data.texts, task.label_names)


CHECKED = slice(0, 2 * PER_LABEL, 4)  # texts re-scored here: both labels, a quarter of them


def soft_cross_entropy(probs: np.ndarray, targets: np.ndarray) -> float:
    return float(-(targets * np.log(np.clip(probs, 1e-9, None))).sum(axis=1).mean())


def test_candidate_folder_is_an_fm_adapter_with_trained_weights(folder, backend):
    meta = SpecialistMeta.read(folder)
    assert meta.kind == ADAPTER_KIND and meta.base_model == backend.ref.model
    assert json.loads((folder / ADAPTER_DIR / "adapter_config.json").read_text())["r"] == 8
    weights = load_file(folder / ADAPTER_DIR / "adapter_model.safetensors")
    up = [w for name, w in weights.items() if "lora_B" in name]
    # PEFT starts lora_B at zero (the adapter a no-op): training moved every one.
    assert up and all(np.abs(w).max() > 0 for w in up)
    assert not (folder / "model.onnx").exists()


def test_training_fits_the_targets_better_than_zero_shot(data, zero_shot, tuned):
    gold = data.targets.argmax(axis=1)
    assert soft_cross_entropy(tuned, data.targets) < soft_cross_entropy(zero_shot, data.targets)
    assert np.mean(tuned.argmax(1) == gold) > np.mean(zero_shot.argmax(1) == gold)


def test_the_backend_scores_with_the_adapter_from_its_folder(backend, folder, task, data, tuned):
    texts = data.texts[CHECKED]
    scored = backend.predict_proba(task, texts, adapter=Adapter("youtube-spam@v1", folder))
    np.testing.assert_allclose(scored, tuned[CHECKED], atol=1e-4)  # the job's answers
    with pytest.raises(SpecialistLoadError, match="no answer for 1 of 1"):
        read_answers(folder, ["a comment nobody asked about"], task.label_names)


def test_base_model_answers_are_unchanged_once_an_adapter_is_loaded(
    backend, folder, task, data, zero_shot, tuned
):
    backend.predict_proba(task, data.texts[:1], adapter=Adapter("youtube-spam@v1", folder))
    assert np.abs(tuned - zero_shot).max() > 0.1
    base = backend.predict_proba(task, data.texts[CHECKED])
    np.testing.assert_allclose(base, zero_shot[CHECKED], atol=1e-5)


def test_fm_adapter_candidate_is_judged_from_its_answers_and_a_champion_through_the_fm(
    folder, backend, task, data, tuned
):
    rows = np.arange(len(data))[CHECKED]  # the exam
    texts = [data.texts[i] for i in rows]
    labels = [task.label_names[i] for i in data.targets[rows].argmax(axis=1)]
    none = FoundationAnswers(np.zeros((0, 2)), np.zeros(0, np.int64), 0, 0, 0, len(texts))
    exam = Exam(texts, labels, none)
    accuracy = float(np.mean(tuned[rows].argmax(1) == data.targets[rows].argmax(1)))

    without_fm = judge(task, folder, exam, Champion("1", folder))
    assert without_fm.candidate.metrics.accuracy == pytest.approx(accuracy)
    assert without_fm.candidate.metrics.p50_latency_ms is None  # the FM's, not measured here
    assert without_fm.champion is None and "no FM was given" in without_fm.champion_problem

    with_fm = judge(task, folder, exam, Champion("1", folder), fm=backend)
    assert with_fm.champion_problem is None
    np.testing.assert_allclose(with_fm.champion.probabilities, tuned[rows], atol=1e-4)


def test_the_registry_keeps_the_adapter_folder_and_records_its_base_model(folder, tmp_path):
    registry = Registry(
        f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri(), tmp_path / "cache"
    )
    version = registry.log_candidate("youtube-spam", folder, params={"families": "lora"})
    run = registry.client.get_run(
        registry.client.get_model_version(registry.registered_name("youtube-spam"), version).run_id
    )
    assert run.data.params["base_model"] == SpecialistMeta.read(folder).base_model
    assert run.data.params["kind"] == ADAPTER_KIND
    copy = registry.download("youtube-spam", version=version)
    assert is_adapter(copy) and SpecialistMeta.read(copy).version == version
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (copy / ADAPTER_DIR / name).read_bytes() == (
            folder / ADAPTER_DIR / name
        ).read_bytes()


def test_an_adapter_carries_no_onnx_graph_and_an_onnx_specialist_needs_one():
    with pytest.raises(ValueError, match="needs"):
        SpecialistFiles(model="tfidf-lr", onnx=None)
    with pytest.raises(ValueError, match="has no"):
        SpecialistFiles(model="x-lora", onnx=b"graph", kind=ADAPTER_KIND)


def test_the_lora_block_of_a_task_and_what_a_round_hands_its_job(task):
    spec = TrainingSpec.model_validate(
        {"families": ["tfidf", "lora"], "lora": {"steps": 5, "rank": 4}}
    )
    assert spec.lora == LoraSpec(steps=5, rank=4) and spec.lora.batch_size == 8
    with pytest.raises(ValidationError, match="alpha"):
        TrainingSpec.model_validate({"lora": {"alpha": 3}})
    none = FoundationAnswers(np.zeros((0, 2)), np.zeros(0, np.int64), 0, 0, 0, 1)
    exam = Exam(["e"], ["HAM"], none, calibration=Exam(["c"], ["SPAM"], none))
    assert lora_inputs(task, exam) == {}
    with_lora = task.model_copy(
        update={"training": task.training.model_copy(update={"families": ["tfidf", "lora"]})}
    )
    inputs = json.loads(json.dumps(lora_inputs(with_lora, exam)))  # a job's input is JSON
    assert inputs["answer_texts"] == ["e", "c"]
    assert TaskSpec.model_validate(inputs["task_spec"]) == with_lora


def test_multi_token_labels_train_through_the_packed_label_pass(backend, intents):
    """banking77's intents are 2-6 tokens: their later tokens come from the packed pass
    over the prompt's cache, which the loss must reach too."""
    assert max(len(ids) for ids in backend.label_tokens(intents)) > 1
    trained = train_adapter(
        backend,
        intents,
        ["my card has not arrived yet", "I want a refund"],
        np.eye(len(intents.labels))[[1, 2]],
        spec=LoraSpec(steps=3, batch_size=2, lr=1e-2),
    )
    assert trained.losses[-1] < 0.5 * trained.losses[0]


def test_loaded_adapters_are_bounded_least_recently_used_first(backend, task, folder):
    names = [f"youtube-spam@v{k}" for k in range(MAX_ADAPTERS + 1)]
    answers = [backend.predict_proba(task, ["nice"], adapter=Adapter(n, folder)) for n in names]
    assert list(backend._adapters) == names[1:]  # the first, least recent, was dropped
    again = backend.predict_proba(task, ["nice"], adapter=Adapter(names[0], folder))
    np.testing.assert_allclose(again, answers[0], atol=1e-6)  # loaded again, the same


def test_a_training_jobs_adapter_candidate_travels_as_json_and_files(folder, tmp_path):
    files = SpecialistFiles(
        model="smollm2-lora",
        onnx=None,
        extra={f"{ADAPTER_DIR}/{p.name}": p.read_bytes() for p in (folder / ADAPTER_DIR).iterdir()}
        | {ANSWERS_FILE: (folder / ANSWERS_FILE).read_bytes()},
        params={"base_model": "smollm2-135m-instruct"},
        kind=ADAPTER_KIND,
        base_model="smollm2-135m-instruct",
    )
    sent = Candidate("youtube-spam", ["HAM", "SPAM"], "lora", files, {"lora": 0.9}, {"lora": 1.0})
    received = read_candidate(write_candidate(sent, tmp_path / "out"))
    assert received == sent
    copy = received.write(tmp_path / "copy")
    assert is_adapter(copy) and (copy / ADAPTER_DIR / "adapter_model.safetensors").exists()


def test_a_round_trains_no_reviews_only_adapter_beside_itself(task):
    model, why_not = reviews_only_model(task, None, "lora")
    assert model is None and "training job" in why_not
