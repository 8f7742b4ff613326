"""The `minilm-ft` family: all-MiniLM-L6-v2 fine-tuned end to end. Its encoder's weights
move (the process's frozen encoder, shared with `minilm`, does not), the one ONNX graph
answers as the torch model does, and the folder serves through the gateway's app.

Tiny on purpose (48 texts, one epoch, three steps of 16): a fine-tuning step costs
~1 s on 2 CPU cores. Accuracy at scale is `bench/families.py`'s job.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pydantic
import pytest
import torch

from protege import datasets
from protege.artifact import TOKENIZER_FILE, Specialist
from protege.improver.training import FAMILIES, TrainingSet, minilm, minilm_ft
from protege.serving.api import build_api
from protege.serving.auth import ApiKeys
from protege.serving.gateway import GatewayCore
from protege.serving.prediction_ids import PredictionIds
from protege.serving.specialists import SpecialistSlots
from protege.settings import Settings
from protege.taskspec import Policy, RoutingSpec, TrainingSpec

LABELS = ["HAM", "SPAM"]
N_GOLD, N_SOFT = 32, 16
SPEC = TrainingSpec(families=["minilm-ft"], finetune_epochs=1, finetune_batch_size=16)
SAMPLES = [
    "Subscribe to my channel for free iPhones http://bit.ly/x",
    "love this song <3",
    "ok",
    "check out my playlist, you will not regret it " * 20,  # past MAX_TOKENS: truncated
]


@pytest.fixture(scope="module")
def youtube():
    train = datasets.youtube("train")
    rows = np.random.default_rng(0).permutation(len(train))[: N_GOLD + N_SOFT]
    return train.subset(rows), datasets.youtube("test").subset(range(60))


@pytest.fixture(scope="module")
def tuned(youtube):
    """(fine-tuned classifier, the frozen encoder's weights before training)."""
    train, _ = youtube
    soft = np.eye(2)[train.y[N_GOLD:]] * 0.6 + 0.2  # the label model's 0.8 / 0.2
    data = TrainingSet.build(
        LABELS,
        soft_texts=train.texts[N_GOLD:],
        soft_probs=soft,
        gold_texts=train.texts[:N_GOLD],
        gold_labels=train.labels[:N_GOLD],
        gold_weight=2.0,
    )
    frozen, _ = minilm.load_encoder()
    before = {name: p.detach().clone() for name, p in frozen.named_parameters()}
    return minilm_ft.fine_tune(data, SPEC, progress=False), before


@pytest.fixture(scope="module")
def exported(tuned, tmp_path_factory):
    files = minilm_ft.export(tuned[0], SPEC)
    folder = files.write(
        tmp_path_factory.mktemp("minilm-ft"), task="youtube-spam", labels=LABELS, version="t"
    )
    return files, folder


def test_the_family_is_registered_and_a_task_may_ask_for_it():
    assert FAMILIES["minilm-ft"] is minilm_ft
    assert TrainingSpec(families=["tfidf", "minilm-ft"]).families == ["tfidf", "minilm-ft"]
    with pytest.raises(pydantic.ValidationError):
        TrainingSpec(families=["minilm_ft"])


def test_batches_cover_every_row_once_with_similar_lengths_together():
    lengths = np.random.default_rng(1).integers(1, 128, size=103)
    epoch = minilm_ft.batches(lengths, 8, np.random.default_rng(0))
    rows = np.concatenate(epoch)
    assert sorted(rows.tolist()) == list(range(103))
    assert max(len(b) for b in epoch) == 8
    # one bucket here (8 * BUCKET_BATCHES > 103 rows): each batch is a run of sorted lengths
    spread = np.mean([np.ptp(lengths[b]) for b in epoch])
    assert spread < np.ptp(lengths) / 5


def test_fine_tuning_trains_the_encoder_and_leaves_the_shared_frozen_one_alone(tuned):
    model, before = tuned
    frozen, _ = minilm.load_encoder()
    moved = [
        name for name, p in model.encoder.named_parameters() if not torch.equal(p, before[name])
    ]
    assert len(moved) > 0.9 * len(before)  # every layer, not only the head
    for name, p in frozen.named_parameters():
        assert torch.equal(p, before[name]), name
        assert not p.requires_grad


def test_onnx_answers_as_the_torch_model_does(tuned, exported):
    model, _ = tuned
    _, folder = exported
    _, tokenizer = minilm.load_encoder()
    encoded = tokenizer.encode_batch(SAMPLES)  # padded to the longest, as serving pads
    with torch.no_grad():
        expected = model(
            torch.tensor([e.ids for e in encoded]),
            torch.tensor([e.attention_mask for e in encoded]),
        ).numpy()
    served = Specialist(folder, LABELS).predict_proba(SAMPLES)
    np.testing.assert_allclose(served, expected, atol=1e-4)


def test_the_exported_folder_is_a_specialist_that_learnt_the_task(exported, youtube):
    files, folder = exported
    _, test = youtube
    assert files.model == minilm_ft.NAME and (folder / TOKENIZER_FILE).exists()
    assert files.params["finetune_epochs"] == 1
    specialist = Specialist(folder, LABELS)
    assert specialist.meta.ref.model == minilm_ft.NAME
    probs = specialist.predict_proba(test.texts)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert float(np.mean(probs.argmax(axis=1) == test.y)) >= 0.7


class NoFoundation:
    """The gateway's FM, never asked: the task routes to its specialist alone."""

    ref = None

    async def score(self, task, texts, adapter=None):
        raise AssertionError("the FM was called")

    async def ready(self):
        raise AssertionError("the FM was called")


def test_the_gateway_serves_it(exported, tmp_path):
    """The app a Gateway replica builds (`build_api` over `GatewayCore`), without Ray."""
    _, folder = exported
    settings = Settings(
        home=tmp_path,
        api_keys="predict:predict-key=predict",
        signing_secret="test-secret-of-at-least-16-bytes",
    )
    tasks = settings.load_tasks()
    tasks["youtube-spam"] = tasks["youtube-spam"].model_copy(
        update={"routing": RoutingSpec(policy=Policy.specialist_only, shadow_rate=0.0)}
    )
    slots = SpecialistSlots(tasks, settings)
    assert slots.swap("youtube-spam", folder)
    core = GatewayCore(tasks, NoFoundation(), slots, PredictionIds.from_settings(settings))
    app = build_api(core, ApiKeys.from_settings(settings), settings=settings)

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.post(
                "/v1/tasks/youtube-spam/predict",
                json={"texts": SAMPLES},
                headers={"Authorization": "Bearer predict-key"},
            )

    response = asyncio.run(ask())
    assert response.status_code == 200, response.text
    items = response.json()["predictions"]
    expected = Specialist(folder, LABELS).predict_proba(SAMPLES)
    for item, row in zip(items, expected, strict=True):
        assert item["route"] == "specialist"
        assert item["served_by"]["model"] == minilm_ft.NAME
        assert item["label"] == LABELS[int(row.argmax())]
