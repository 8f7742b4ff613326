"""MiniLM specialists: one ONNX graph (encoder + pooling + head + softmax) that serves as
trained, soft-label training, determinism, and keeping the better family on validation.

MiniLM encoding costs ~20-40 s per 1,600 texts on 2 CPU cores: these tests use subsets.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from protege import datasets
from protege.artifact import TOKENIZER_FILE, Specialist
from protege.improver.training import TrainingSet, distill, minilm, tfidf, train_specialist
from protege.improver.training.distill import time_training
from protege.taskspec import TrainingSpec

LABELS = ["HAM", "SPAM"]
N_TRAIN = 240
N_TEST = 80


@pytest.fixture(scope="module")
def youtube():
    train = datasets.youtube("train")
    rows = np.random.default_rng(0).permutation(len(train))[:N_TRAIN]
    return train.subset(rows), datasets.youtube("test").subset(range(N_TEST))


@pytest.fixture(scope="module")
def trained(youtube, tmp_path_factory):
    train, _ = youtube
    data = TrainingSet.from_gold(LABELS, train.texts, train.labels)
    files = minilm.train(data, TrainingSpec(), progress=False)
    folder = files.write(
        tmp_path_factory.mktemp("minilm"), task="youtube-spam", labels=LABELS, version="t"
    )
    return files, folder


def test_export_is_one_graph_with_the_tokenizer_alongside(trained):
    files, folder = trained
    assert files.model == minilm.NAME
    assert (folder / TOKENIZER_FILE).exists()
    specialist = Specialist(folder, LABELS)
    inputs = [i.name for i in specialist.session.get_inputs()]
    assert inputs == ["input_ids", "attention_mask"]


def test_onnx_matches_torch_on_padded_batches(trained, youtube):
    """Short texts padded next to long ones must score as they do alone."""
    _, folder = trained
    _, test = youtube
    specialist = Specialist(folder, LABELS)
    texts = [test.texts[0], "ok", test.texts[5] * 3]
    batch = specialist.predict_proba(texts)
    alone = np.concatenate([specialist.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-4)


def test_minilm_specialist_learns_youtube_spam(trained, youtube):
    _, folder = trained
    _, test = youtube
    probs = Specialist(folder, LABELS).predict_proba(test.texts)
    accuracy = float(np.mean(probs.argmax(1) == test.y))
    print(f"\nMiniLM head on {N_TRAIN} gold texts: accuracy {accuracy:.3f} on {N_TEST} test")
    assert accuracy >= 0.8


def test_head_trains_on_soft_targets_deterministically():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    p_spam = 1 / (1 + np.exp(-8 * x[:, 0]))
    targets = np.stack([1 - p_spam, p_spam], axis=1).astype(np.float32)
    weights = np.ones(60, np.float32)
    spec = TrainingSpec(minilm_c=100.0)
    first = minilm.fit_head(x, targets, weights, spec, progress=False)
    second = minilm.fit_head(x, targets, weights, spec, progress=False)
    assert torch.equal(first.weight, second.weight)
    with torch.no_grad():
        predicted = torch.softmax(first(torch.from_numpy(x)), -1)[:, 1].numpy()
    # soft targets are matched as probabilities, not only as argmax
    assert np.corrcoef(predicted, p_spam)[0, 1] > 0.95


def _family_trained_on_shuffled_labels(data, spec, progress=True):
    shuffled = TrainingSet(
        data.labels,
        data.texts,
        np.random.default_rng(1).permutation(data.targets),
        data.weights,
        data.gold,
    )
    return tfidf.train(shuffled, spec, progress=progress)


@pytest.mark.parametrize("order", [["tfidf", "minilm"], ["minilm", "tfidf"]])
def test_the_better_family_on_validation_is_kept(youtube, monkeypatch, order):
    """Stand in a shuffled-label model for "minilm" (cheap): tfidf must win either way."""
    monkeypatch.setitem(
        distill.FAMILIES, "minilm", types.SimpleNamespace(train=_family_trained_on_shuffled_labels)
    )
    train = datasets.youtube("train").subset(range(300))
    valid = datasets.youtube("valid")
    data = TrainingSet.from_gold(LABELS, train.texts, train.labels)
    candidate = train_specialist(
        "youtube-spam",
        data,
        TrainingSpec(families=order),
        (valid.texts, valid.labels),
        progress=False,
    )
    assert candidate.family == "tfidf"
    assert candidate.validation_accuracy["tfidf"] > candidate.validation_accuracy["minilm"] + 0.1
    assert set(candidate.train_seconds) == {"tfidf", "minilm"}


def test_without_a_validation_split_a_stratified_share_is_held_out(youtube):
    train, _ = youtube
    data = TrainingSet.from_gold(LABELS, train.texts, train.labels)
    candidate = train_specialist(
        "youtube-spam", data, TrainingSpec(families=["tfidf"]), progress=False
    )
    assert candidate.params["validation_examples"] == pytest.approx(0.15 * N_TRAIN, abs=2)
    assert candidate.params["train_examples"] + candidate.params["validation_examples"] == N_TRAIN


def test_training_time_is_measured_per_thousand_examples(youtube):
    train, _ = youtube
    data = TrainingSet.from_gold(LABELS, train.texts[:100], train.labels[:100])
    timing = time_training("tfidf", data)
    assert timing.examples == 100
    assert timing.seconds_per_1k == pytest.approx(10 * timing.fit_export_seconds)


def test_with_enough_gold_rows_the_hold_out_is_gold_only(youtube):
    train, _ = youtube
    data = TrainingSet.build(
        LABELS,
        soft_texts=[t + " (soft)" for t in train.texts],
        soft_probs=np.eye(2)[train.y],
        gold_texts=train.texts,
        gold_labels=train.labels,
    )
    rest, held = data.split(0.15, seed=0, among=data.gold)
    assert held.gold.all() and len(held) == pytest.approx(0.15 * N_TRAIN, abs=2)
    assert len(rest) + len(held) == len(data)
    assert np.mean(held.targets[:, 1]) == pytest.approx(np.mean(train.y), abs=0.05)  # stratified
    candidate = train_specialist(
        "youtube-spam", data, TrainingSpec(families=["tfidf"]), progress=False
    )
    assert candidate.params["validation_examples"] == len(held)
