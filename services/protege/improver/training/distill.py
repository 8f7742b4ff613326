"""Distill: train each configured family, keep the better on validation.

Validation scores come from the exported ONNX loaded by the serving class, so a
family whose export misbehaves loses here rather than in production; an fm-adapter
(the `lora` family) is scored by the FM with the adapter loaded, in the job, and its
answers recorded in the candidate.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from protege.artifact import ADAPTER_KIND, Specialist, SpecialistFiles, read_answers
from protege.improver.training import lora, minilm, minilm_ft, minilm_setfit, tfidf
from protege.improver.training.dataset import TrainingSet, label_indices
from protege.taskspec import TaskSpec, TrainingSpec

log = logging.getLogger(__name__)

FAMILIES = {
    "tfidf": tfidf,
    "minilm": minilm,
    "minilm-ft": minilm_ft,
    "minilm-setfit": minilm_setfit,
    "lora": lora,
}
CANDIDATE_VERSION = "candidate"  # until the registry assigns one
# Below this many gold rows the hold-out is drawn from all rows (soft labels' argmax):
# those favour the family most like the labeler (an n-gram stack, TF-IDF), so true labels
# judge once the held-out share of the gold (`validation_fraction`, 15 %) is fifteen rows.
MIN_GOLD_FOR_VALIDATION = 100

Validation = tuple[Sequence[str], Sequence]  # (texts, gold labels: names or indices)


@dataclass(frozen=True)
class Candidate:
    """The kept specialist, as bytes, with how it was chosen."""

    task: str
    labels: list[str]
    family: str
    files: SpecialistFiles
    validation_accuracy: dict[str, float]  # family -> accuracy on validation
    train_seconds: dict[str, float]  # family -> fit + export wall time
    params: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.files.model

    def write(
        self, folder: Path | str, version: str = CANDIDATE_VERSION, threshold: float | None = None
    ) -> Path:
        return self.files.write(
            folder, task=self.task, labels=self.labels, version=version, threshold=threshold
        )


def validation_accuracy(
    files: SpecialistFiles,
    labels: list[str],
    texts: Sequence[str],
    gold: np.ndarray,
    batch_size: int = 256,
) -> float:
    """Accuracy of the exported model, loaded as serving loads it (an fm-adapter: its
    recorded answers, which its job computed with the adapter loaded)."""
    with tempfile.TemporaryDirectory(prefix="protege-val-") as tmp:
        folder = files.write(tmp, task="validation", labels=labels, version=CANDIDATE_VERSION)
        if files.kind == ADAPTER_KIND:
            return float(np.mean(read_answers(folder, list(texts), labels).argmax(axis=1) == gold))
        specialist = Specialist(folder, labels)
        predicted = np.concatenate(
            [
                specialist.predict_proba(list(texts[i : i + batch_size])).argmax(axis=1)
                for i in range(0, len(texts), batch_size)
            ]
        )
    return float(np.mean(predicted == gold))


def train_specialist(
    task: str,
    train: TrainingSet,
    spec: TrainingSpec,
    validation: Validation | None = None,
    *,
    progress: bool = True,
    task_spec: TaskSpec | dict | None = None,
    answer_texts: Sequence[str] = (),
) -> Candidate:
    """Train every family in `spec.families` and return the better on validation.

    `validation` is (texts, gold labels); without it a stratified
    `spec.validation_fraction` of `train` is held out (of its gold rows when it has
    `MIN_GOLD_FOR_VALIDATION`). Ties go to the earlier family in the list (list the
    cheaper first). The `lora` family needs `task_spec` (its prompt and label words; a
    TaskSpec or its JSON dump, as a job's input carries it) and answers `answer_texts`
    (the exam's and calibration set's) besides validation."""
    from tqdm.auto import tqdm

    labels = list(train.labels)
    if validation is None:
        # Gold rows judge families better than soft labels do, when there are enough.
        among = train.gold if train.gold.sum() >= MIN_GOLD_FOR_VALIDATION else None
        train, held = train.split(spec.validation_fraction, spec.seed, among)
        validation = (held.texts, held.targets.argmax(axis=1))
    val_texts, val_gold = list(validation[0]), label_indices(labels, validation[1])
    if not len(train) or not val_texts:
        raise ValueError(
            f"{task}: need training and validation examples (got {len(train)} and {len(val_texts)})"
        )
    accuracy: dict[str, float] = {}
    seconds: dict[str, float] = {}
    best: SpecialistFiles | None = None
    best_family = ""
    for family in tqdm(spec.families, desc=f"{task}: families", disable=not progress):
        start = time.perf_counter()
        if family == "lora":
            if task_spec is None:
                raise ValueError(f"{task}: the lora family needs the task spec")
            files = lora.train(
                train,
                spec,
                progress,
                task=TaskSpec.model_validate(task_spec),
                answer_texts=[*answer_texts, *val_texts],
            )
        else:
            files = FAMILIES[family].train(train, spec, progress=progress)
        seconds[family] = time.perf_counter() - start
        accuracy[family] = validation_accuracy(files, labels, val_texts, val_gold)
        log.info(
            "%s: %s validation accuracy %.4f (%.1f s)",
            task,
            family,
            accuracy[family],
            seconds[family],
        )
        if best is None or accuracy[family] > accuracy[best_family]:
            best, best_family = files, family
    params = {
        "families": ",".join(spec.families),
        "chosen_family": best_family,
        "seed": spec.seed,
        "train_examples": len(train),
        "train_gold_examples": int(train.gold.sum()),
        "validation_examples": len(val_texts),
        "epochs": spec.epochs,
        "minilm_c": spec.minilm_c,
        "tfidf_c": spec.tfidf_c,
        "gold_weight": spec.gold_weight,
        "num_gpus": spec.num_gpus,
        **best.params,
    }
    return Candidate(task, labels, best_family, best, accuracy, seconds, params)


@dataclass(frozen=True)
class TrainingTiming:
    family: str
    examples: int
    fit_export_seconds: float
    cpu_seconds: float | None = None  # this process's CPU time meanwhile: steadier under load
    test_accuracy: float | None = None  # on the data set's test split, when asked
    files: SpecialistFiles | None = field(default=None, repr=False, compare=False)

    @property
    def seconds_per_1k(self) -> float:
        return 1000.0 * self.fit_export_seconds / self.examples

    @property
    def cpu_seconds_per_1k(self) -> float | None:
        return None if self.cpu_seconds is None else 1000.0 * self.cpu_seconds / self.examples


def time_training(
    family: str,
    train: TrainingSet,
    spec: TrainingSpec | None = None,
    *,
    warm: bool = True,
    progress: bool = False,
) -> TrainingTiming:
    """Wall time of one family's training (fit + ONNX export) on `train`, for benchmarks.

    With `warm`, one-off loads (the MiniLM encoder weights) happen before the clock starts,
    so that the figure scales with the data."""
    spec = spec or TrainingSpec()
    module = FAMILIES[family]
    if warm and module in (minilm, minilm_ft, minilm_setfit):
        minilm.load_encoder()
    start, cpu = time.perf_counter(), time.process_time()
    files = module.train(train, spec, progress=progress)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return TrainingTiming(family, len(train), wall, cpu_seconds=cpu, files=files)


def benchmark_training(
    task: str = "youtube-spam",
    examples: int = 1000,
    families: Sequence[str] = ("tfidf", "minilm"),
    seed: int = 0,
    test: bool = False,
) -> list[TrainingTiming]:
    """Training time of each family on the same `examples` random gold texts of a shipped
    data set (`protege.datasets`), e.g. for `bench/`: `[t.seconds_per_1k for t in ...]`;
    with `test`, each exported model's accuracy on the data set's test split too."""
    from protege import datasets

    train = datasets.load(task, "train")
    rows = np.random.default_rng(seed).permutation(len(train))[:examples]
    data = TrainingSet.from_gold(
        train.label_names, [train.texts[i] for i in rows], [train.labels[i] for i in rows]
    )
    timings = [time_training(family, data, TrainingSpec(seed=seed)) for family in families]
    if not test:
        return timings
    held = datasets.load(task, "test")
    gold = label_indices(train.label_names, held.labels)
    return [
        replace(t, test_accuracy=validation_accuracy(t.files, train.label_names, held.texts, gold))
        for t in timings
    ]
