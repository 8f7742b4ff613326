"""The `lora` family: a LoRA adapter of the foundation model itself (an fm-adapter
specialist, served by the FM deployment), trained on the soft labels through the
task's prompt and label words (`foundation.lora`).

Opt in (`training.families: [..., lora]`): it needs the transformers FM in the training
process, which a training job may load and the improver's own process never does.
Since nothing else can run the adapter, the job also answers the texts it is given
(the exam's, the calibration set's, the validation texts) into `answers.json`; the
judge reads them from there.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from protege.artifact import ADAPTER_DIR, ADAPTER_KIND, ANSWERS_FILE, SpecialistFiles, answers_json
from protege.foundation.backend import Adapter
from protege.improver.training.dataset import TrainingSet
from protege.settings import Settings
from protege.taskspec import TaskSpec, TrainingSpec

if TYPE_CHECKING:  # torch, transformers and peft load in the training job only
    from protege.foundation.transformers_backend import TransformersBackend

log = logging.getLogger(__name__)

NAME = "lora"


@cache
def foundation() -> TransformersBackend:
    """This process's FM (the deployment's `PROTEGE_FM_*` settings), loaded once."""
    from protege.foundation.transformers_backend import TransformersBackend

    return TransformersBackend.from_settings(Settings())


def train(
    data: TrainingSet,
    spec: TrainingSpec,
    progress: bool = True,
    *,
    task: TaskSpec,
    answer_texts: Sequence[str] = (),
    backend: TransformersBackend | None = None,
) -> SpecialistFiles:
    """Train the adapter on at most `spec.lora.max_examples` rows (seeded draw) and answer
    `answer_texts` with it: the files of an fm-adapter folder."""
    from protege.foundation.lora import train_adapter

    backend = backend or foundation()
    lora = spec.lora
    rows = np.random.default_rng(spec.seed).permutation(len(data))[: lora.max_examples]
    trained = train_adapter(
        backend,
        task,
        [data.texts[i] for i in rows],
        data.targets[rows],
        data.weights[rows],
        lora,
        seed=spec.seed,
        progress=progress,
    )
    log.info(
        "%s: LoRA %d steps, %.1f s per 1,000 examples, loss %.3f -> %.3f",
        task.name,
        lora.steps,
        trained.seconds_per_1k,
        trained.losses[0],
        trained.losses[-1],
    )
    texts = list(dict.fromkeys(answer_texts))
    with tempfile.TemporaryDirectory(prefix="protege-lora-") as tmp:
        (Path(tmp) / ADAPTER_DIR).mkdir()
        for name, content in trained.files.items():
            (Path(tmp) / ADAPTER_DIR / name).write_bytes(content)
        adapter = Adapter(f"{task.name}@trained", Path(tmp))
        try:
            probs = backend.predict_proba(task, texts, adapter=adapter)
        finally:
            backend.forget(adapter.name)  # the next job's adapter takes the same name
    base_model = backend.ref.model
    return SpecialistFiles(
        model=f"{base_model}-lora",
        onnx=None,
        extra={
            **{f"{ADAPTER_DIR}/{name}": content for name, content in trained.files.items()},
            ANSWERS_FILE: answers_json(list(data.labels), texts, probs),
        },
        params={
            "base_model": base_model,
            "lora_steps": lora.steps,
            "lora_rank": lora.rank,
            "lora_lr": lora.lr,
            "lora_batch_size": lora.batch_size,
            "lora_examples": len(rows),
            "lora_seconds_per_1k": round(trained.seconds_per_1k, 2),
            "lora_first_loss": round(trained.losses[0], 4),
            "lora_last_loss": round(trained.losses[-1], 4),
            "answered_texts": len(texts),
        },
        kind=ADAPTER_KIND,
        base_model=base_model,
    )
