"""From the example store to training data: every text of a task, the votes of its
labeling functions, and the label model's probabilistic labels.

The label model is fitted on the ``train`` split only and chooses between Snorkel's
model and majority vote on the train split's gold; ``holdout`` gold is left for the
gate. On tasks with more than two labels a reviewer's bare thumbs-down rules its
served label out of the example's probabilistic label.

Example
-------
>>> from protege.improver.store import ExampleStore
>>> from protege.config import load_tasks, DEFAULT_TASKS_FILE
>>> task = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]
>>> data = build_training_data(task, ExampleStore("sqlite://"), sources=("rule", "python"))
>>> len(data.points)
0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protege.config import TaskSpec
from protege.improver.feedback_lfs import rejected_labels
from protege.improver.gold import HOLDOUT, TRAIN, gold_examples, split_of
from protege.improver.label_model import LabelModelFit, exclude_labels, fit_label_model
from protege.improver.labeling import DataPoint, LabelingFunction, LabelMatrix, LFApplier
from protege.improver.sources import SOURCES, task_lfs
from protege.improver.store import ExampleStore, GoldExample, text_hash


@dataclass
class TrainingData:
    task: TaskSpec
    points: list[DataPoint]
    split: np.ndarray  # "train" | "holdout" per point
    matrix: LabelMatrix
    fit: LabelModelFit
    probs: np.ndarray  # [N, C] probabilistic labels (meaningful where `labeled`)
    labeled: np.ndarray  # covered by some LF and not ruled out by reviewers
    gold: list[GoldExample]
    gold_y: np.ndarray  # per point: gold label index, -1 when none

    @property
    def texts(self) -> list[str]:
        return [x.text for x in self.points]

    def training_rows(self) -> np.ndarray:
        """Indices of points a specialist may train on: labeled and in the train split."""
        return np.flatnonzero(self.labeled & (self.split == TRAIN))

    def holdout_gold(self) -> list[GoldExample]:
        return [g for g in self.gold if g.split == HOLDOUT]

    def to_training_set(self, gold_weight: float | None = None):
        """The specialist's training set: probabilistic labels of the train split plus
        the train split's gold (one-hot; a gold text is not also a soft row).
        Holdout texts are left out entirely."""
        from protege.improver.training.dataset import TrainingSet

        gold = [g for g in self.gold if g.split == TRAIN]
        gold_hashes = {text_hash(g.text) for g in gold}
        rows = [
            i for i in self.training_rows() if text_hash(self.points[i].text) not in gold_hashes
        ]
        weight = self.task.training.gold_weight if gold_weight is None else gold_weight
        return TrainingSet.build(
            self.task.label_names,
            soft_texts=[self.points[i].text for i in rows],
            soft_probs=self.probs[rows] if rows else None,
            gold_texts=[g.text for g in gold],
            gold_labels=[g.label for g in gold],
            gold_weight=weight,
        )


def collect_points(
    store: ExampleStore, task: TaskSpec
) -> tuple[list[DataPoint], list[GoldExample]]:
    """The task's traffic, plus imported gold texts never seen in traffic."""
    points = store.points(task.name)
    gold = gold_examples(store, task, points)
    seen = {text_hash(x.text) for x in points}
    points += [
        DataPoint(g.text, uid=f"gold:{text_hash(g.text)[:12]}")
        for g in gold
        if text_hash(g.text) not in seen
    ]
    return points, gold


def label_points(
    task: TaskSpec,
    points: Sequence[DataPoint],
    lfs: Sequence[LabelingFunction],
    gold: Sequence[GoldExample] = (),
) -> TrainingData:
    """Apply `lfs` to `points` and fit the task's label model (see module docstring)."""
    points = list(points)
    fraction = task.labeling.holdout_fraction
    split = np.array([split_of(x.text, fraction) for x in points], dtype=object)
    index = {name: i for i, name in enumerate(task.label_names)}
    gold_by_hash = {text_hash(g.text): index[g.label] for g in gold}
    gold_y = np.array([gold_by_hash.get(text_hash(x.text), -1) for x in points], dtype=np.int64)

    matrix = LFApplier(lfs, task.label_names).apply(points)
    train = split == TRAIN
    cardinality = len(task.labels)
    fit = fit_label_model(
        matrix.L[train],
        cardinality,
        task.labeling.label_model,
        gold_L=matrix.L[train],
        gold_y=gold_y[train],
    )
    probs = fit.model.predict_proba(matrix.L) if len(points) else np.zeros((0, cardinality))
    labeled = matrix.covered.copy()
    if cardinality > 2:
        probs, still_valid = exclude_labels(probs, rejected_labels(task, points))
        labeled &= still_valid
    return TrainingData(task, points, split, matrix, fit, probs, labeled, list(gold), gold_y)


def build_training_data(
    task: TaskSpec,
    store: ExampleStore,
    sources: Sequence[str] = SOURCES,
    backend=None,
    lfs: Sequence[LabelingFunction] | None = None,
) -> TrainingData:
    """Everything the store knows about `task`, labeled by its LFs and label model.
    Prompt-LF scores are cached in the store."""
    points, gold = collect_points(store, task)
    if lfs is None:
        lfs = task_lfs(task, sources, backend=backend, cache=store)
    return label_points(task, points, lfs, gold)
