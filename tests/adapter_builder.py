"""Build a small real FM adapter for serving tests: a LoRA of the CPU SmolLM2 trained
by the `lora` family's own trainer (`protege.foundation.lora.train_adapter`) for a few
dozen steps on labelled youtube comments, saved beside a `model.json` of kind
fm-adapter. Trained once per test session (~0.5-1 s a text on 2 cores), then copied."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from protege.artifact import ADAPTER_DIR, ADAPTER_KIND, SpecialistMeta
from protege.foundation.smollm import MODEL_NAME

STEPS, BATCH = 24, 2  # 48 texts, each seen once


@cache
def trained_files() -> dict[str, bytes]:
    """PEFT's files of an adapter trained on youtube-spam's first labelled train texts."""
    from protege import datasets
    from protege.foundation.lora import train_adapter
    from protege.foundation.transformers_backend import TransformersBackend
    from protege.settings import Settings
    from protege.taskspec import LoraSpec

    settings = Settings()
    task = settings.load_tasks()["youtube-spam"]
    train = datasets.load("youtube-spam", "train")
    rows = np.random.default_rng(0).permutation(len(train))[: STEPS * BATCH]
    targets = np.eye(len(task.labels))[np.asarray(train.y)[rows]]
    backend = TransformersBackend.from_settings(settings)
    trained = train_adapter(
        backend,
        task,
        [train.texts[i] for i in rows],
        targets,
        spec=LoraSpec(steps=STEPS, batch_size=BATCH, rank=4),
    )
    assert trained.losses and np.isfinite(trained.losses).all()
    return trained.files


def build_adapter(folder: Path, task: str, labels: list[str], version: str = "1") -> Path:
    (folder / ADAPTER_DIR).mkdir(parents=True, exist_ok=True)
    for name, data in trained_files().items():
        (folder / ADAPTER_DIR / name).write_bytes(data)
    SpecialistMeta(
        task=task,
        model="smollm2-lora",
        version=version,
        labels=list(labels),
        kind=ADAPTER_KIND,
        base_model=MODEL_NAME,
    ).write(folder)
    return folder
