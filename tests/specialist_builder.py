"""Build a small real specialist for serving tests: the project's own TF-IDF family
trained on a data set's train labels (or shuffled ones, or a few per label), exported
to ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protege import datasets
from protege.improver.training import tfidf
from protege.improver.training.dataset import TrainingSet
from protege.taskspec import TrainingSpec


def build_specialist(
    task: str,
    folder: Path,
    version: str = "1",
    shuffle_labels: bool = False,
    per_label: int | None = None,
) -> Path:
    """`per_label`: train on that many texts of each label only (77 labels train in
    seconds on a few each, in minutes on all)."""
    train = datasets.load(task, "train")
    texts, labels = list(train.texts), list(train.labels)
    if per_label is not None:
        kept = [
            i
            for name in train.label_names
            for i in [j for j, label in enumerate(labels) if label == name][:per_label]
        ]
        texts, labels = [texts[i] for i in kept], [labels[i] for i in kept]
    if shuffle_labels:
        labels = list(np.random.default_rng(0).permutation(labels))
    data = TrainingSet.build(train.label_names, gold_texts=texts, gold_labels=labels)
    files = tfidf.train(data, TrainingSpec(families=["tfidf"]), progress=False)
    return files.write(folder, task=task, labels=train.label_names, version=version)


def build_youtube_specialist(
    folder: Path, version: str = "1", shuffle_labels: bool = False, per_label: int | None = None
) -> Path:
    return build_specialist("youtube-spam", folder, version, shuffle_labels, per_label)
