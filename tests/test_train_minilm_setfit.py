"""The `minilm-setfit` family: all-MiniLM-L6-v2 tuned contrastively on pairs of texts
(SetFit-style), then a linear head. Its encoder moves (the shared frozen one does not),
pairs pull same-label texts together, and the one ONNX graph answers as the torch
model does. Tiny on purpose (48 texts, 2 pairs each); accuracy at scale is
`bench/families.py`'s job.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protege import datasets
from protege.artifact import Specialist
from protege.improver.training import FAMILIES, TrainingSet, minilm, minilm_setfit
from protege.taskspec import TrainingSpec

LABELS = ["HAM", "SPAM"]
SPEC = TrainingSpec(
    families=["minilm-setfit"], setfit_pairs_per_text=2, finetune_batch_size=16, minilm_c=1.0
)
SAMPLES = ["Subscribe to my channel for free iPhones http://bit.ly/x", "love this song <3", "ok"]


@pytest.fixture(scope="module")
def youtube():
    train = datasets.youtube("train")
    rows = np.random.default_rng(0).permutation(len(train))[:48]
    return train.subset(rows), datasets.youtube("test").subset(range(60))


@pytest.fixture(scope="module")
def trained(youtube, tmp_path_factory):
    """(exported folder, the tuned encoder, the frozen encoder's weights before training)."""
    train, _ = youtube
    data = TrainingSet.from_gold(LABELS, train.texts, train.labels)
    frozen, _ = minilm.load_encoder()
    before = {name: p.detach().clone() for name, p in frozen.named_parameters()}
    encoder = minilm_setfit.contrastive_tune(data, SPEC, progress=False)
    files = minilm_setfit.with_head(encoder, data, SPEC, progress=False)
    folder = files.write(
        tmp_path_factory.mktemp("setfit"), task="youtube-spam", labels=LABELS, version="t"
    )
    return folder, encoder, before, data


def test_the_family_is_registered_and_a_task_may_ask_for_it():
    assert FAMILIES["minilm-setfit"] is minilm_setfit
    assert TrainingSpec(families=["minilm-setfit"]).families == ["minilm-setfit"]


def test_pairs_are_half_same_label_half_other_and_capped():
    labels = np.array([0] * 10 + [1] * 10)
    rows = minilm_setfit.pairs(labels, 4, 1000, np.random.default_rng(0))
    assert len(rows) <= 80 and (rows[:, 0] != rows[:, 1]).all()
    same = labels[rows[:, 0]] == labels[rows[:, 1]]
    assert (same == rows[:, 2].astype(bool)).all()
    assert 0.35 < same.mean() < 0.65
    assert len(minilm_setfit.pairs(labels, 4, 7, np.random.default_rng(0))) == 7


def test_the_contrastive_stage_moves_the_encoder_and_pulls_labels_apart(trained):
    _, encoder, before, data = trained
    frozen, _ = minilm.load_encoder()
    moved = [n for n, p in encoder.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) > 0.9 * len(before)
    for name, p in frozen.named_parameters():
        assert torch.equal(p, before[name]), name

    def separation(model) -> float:
        """Mean same-label cosine minus mean different-label cosine."""
        from protege.encoder import encode

        e = encode(data.texts, encoder=model, progress=False)
        sim, y = e @ e.T, data.targets.argmax(axis=1)
        same = y[:, None] == y[None, :]
        return float(sim[same].mean() - sim[~same].mean())

    assert separation(encoder) > separation(frozen) + 0.015  # 6 steps: 0.110 -> 0.142


def test_onnx_answers_as_the_torch_model_does_and_learnt_the_task(trained, youtube):
    folder, _, _, _ = trained
    specialist = Specialist(folder, LABELS)
    assert specialist.meta.model == minilm_setfit.NAME
    probs = specialist.predict_proba(SAMPLES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    _, test = youtube
    accuracy = float(np.mean(specialist.predict_proba(test.texts).argmax(axis=1) == test.y))
    assert accuracy >= 0.7
