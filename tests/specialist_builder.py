"""Build a small real specialist for serving tests: the project's own TF-IDF family
trained on youtube's train labels (or shuffled ones), exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protege import datasets
from protege.improver.training import tfidf
from protege.improver.training.dataset import TrainingSet
from protege.taskspec import TrainingSpec


def build_youtube_specialist(
    folder: Path, version: str = "1", shuffle_labels: bool = False
) -> Path:
    train = datasets.load("youtube-spam", "train")
    labels = list(train.labels)
    if shuffle_labels:
        labels = list(np.random.default_rng(0).permutation(labels))
    data = TrainingSet.build(train.label_names, gold_texts=train.texts, gold_labels=labels)
    files = tfidf.train(data, TrainingSpec(families=["tfidf"]), progress=False)
    return files.write(folder, task="youtube-spam", labels=train.label_names, version=version)
