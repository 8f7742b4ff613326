"""Label a task's examples: every labeling function votes on every data point, and the
label model combines the votes into one probabilistic label per covered point.

The label model is fitted on the ``train`` split only and chooses between Snorkel's
model and majority vote on the train split's gold; the ``exam`` and ``calibration``
buckets are left for the gate and the cascade threshold. Once the train split holds
enough gold (`labeling.label_model.stack_min_gold`), three labelers are compared on the
reviewed training rows without leakage (feedback LFs never vote on the row they grade;
the stacks are cross-fitted): gold stacking (`labeling.stacking`: the text and the LFs'
votes, weighed on the reviewed rows), the text alone (what the reviews teach without
any LF) and the label model. The stack labels the round unless a rival beats it there
by balanced accuracy (the queue's picks can lean one way) and significantly
(`choose_labeler`). A stack labels every text it is sure enough of
(`stack_min_confidence`), covered by an LF or not, and the label model the LF-covered
rest. On tasks with more than two labels a reviewer's bare thumbs-down rules its served
label out of the example's probabilistic label.

Example
-------
>>> from protege.improver.data.examples import Examples, gather
>>> from protege.taskspec import load_tasks, DEFAULT_TASKS_FILE
>>> task = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]
>>> labeled = label_examples(task, Examples([], []), lfs=[])
>>> len(labeled.points)
0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protege.improver.data.examples import Examples, gather
from protege.improver.data.gold import TRAIN, task_split
from protege.improver.data.records import DataPoint, GoldExample, text_hash
from protege.improver.data.store import ExampleStore
from protege.improver.labeling.embedding import embed, uses_embeddings
from protege.improver.labeling.feedback import rejected_labels
from protege.improver.labeling.functions import (
    ABSTAIN,
    SOURCES,
    LabelingFunction,
    LabelMatrix,
    apply_lfs,
)
from protege.improver.labeling.label_model import (
    LabelModelFit,
    balanced_accuracy,
    exclude_labels,
    fit_label_model,
    to_labels,
)
from protege.improver.labeling.sources import task_lfs
from protege.improver.labeling.stacking import stack_on_gold
from protege.stats import mcnemar_exact_p
from protege.taskspec import TaskSpec

# A rival labeler replaces the stack only when it beats it at this one-sided level.
SWITCH_LEVEL = 0.05


@dataclass
class LabeledData:
    """A task's data points with their votes and probabilistic labels."""

    task: TaskSpec
    points: list[DataPoint]
    split: np.ndarray  # "train" | "calibration" | "exam" per point
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

    def train_gold(self) -> list[GoldExample]:
        """Gold in the train bucket, trusted or not: what a reviews-only model learns from."""
        return [g for g in self.gold if g.split == TRAIN]


def label_examples(
    task: TaskSpec, examples: Examples, lfs: Sequence[LabelingFunction]
) -> LabeledData:
    """Apply `lfs` to the examples' points and fit the task's label model (see module
    docstring)."""
    points, gold = list(examples.points), list(examples.gold)
    split = np.array([task_split(task, x.text) for x in points], dtype=object)
    index = {name: i for i, name in enumerate(task.label_names)}
    gold_by_hash = {text_hash(g.text): index[g.label] for g in gold}
    gold_y = np.array([gold_by_hash.get(text_hash(x.text), -1) for x in points], dtype=np.int64)

    matrix = apply_lfs(lfs, task.label_names, points)
    train = split == TRAIN
    cardinality = len(task.labels)
    spec = task.labeling.label_model
    # Graded without leakage: a review never votes on the row it grades.
    blind_L = without_feedback(matrix)
    fit = fit_label_model(
        matrix.L[train], cardinality, spec, gold_L=blind_L[train], gold_y=gold_y[train]
    )
    probs = fit.model.predict_proba(matrix.L) if len(points) else np.zeros((0, cardinality))
    labeled = matrix.covered.copy()
    stack = (
        stack_on_gold(
            [x.text for x in points],
            matrix.columns([s for s in SOURCES if s != "feedback"]).L,
            gold_y,
            train,
            cardinality,
            min_gold=spec.stack_min_gold,
            vote_weight=spec.stack_vote_weight,
            seed=spec.seed,
            embeddings=embed([x.text for x in points]) if uses_embeddings(task) else None,
        )
        if spec.stack and len(points)
        else None
    )
    if stack is not None:
        graded = train & (gold_y >= 0)
        blind = to_labels(fit.model.predict_proba(blind_L[graded]), np.ones(graded.sum(), bool))
        # Balanced: the reviewed rows are the queue's picks, which can lean one way.
        chosen, scores, p_values = choose_labeler(
            {
                "stacked": stack.probs[graded].argmax(axis=1),
                "reviews_only": stack.text_probs[graded].argmax(axis=1),
                fit.kind: blind,
            },
            gold_y[graded],
        )
        fit.choice["stacked"] = {
            **stack.summary(),
            "scores": scores,
            "p_better_than_stacked": p_values,
            "chosen": chosen,
        }
        if chosen != fit.kind:
            stacked = stack.probs if chosen == "stacked" else stack.text_probs
            # A stack knows only the labels the reviews carry: where it is unsure (77
            # intents, a few reviews each), the label model's votes stand.
            sure = stacked.max(axis=1) >= spec.stack_min_confidence
            probs = np.where(sure[:, None], stacked, probs)
            labeled = sure | matrix.covered
    if cardinality > 2:
        probs, still_valid = exclude_labels(probs, rejected_labels(task, points))
        labeled &= still_valid
    return LabeledData(task, points, split, matrix, fit, probs, labeled, gold, gold_y)


def choose_labeler(
    predictions: dict[str, np.ndarray], y: np.ndarray, level: float = SWITCH_LEVEL
) -> tuple[str, dict[str, float], dict[str, float]]:
    """(the labeler to keep, each one's balanced accuracy, each rival's p-value of beating
    the stack) on the reviewed rows. The stack (the first of `predictions`) stays unless a
    rival beats it there on balanced accuracy *and* significantly (one-sided exact McNemar
    on the same rows, p < `level`). Why: the stack holds the text's features too, so it
    rarely labels worse than the text alone; with ~100 reviews the cross-fitted scores
    differ by a few rows, and on youtube the rival that led them by 3 points made a
    specialist 2 points worse than the stack's (README "Labels"): a plain max chose on
    noise."""
    balanced = {name: balanced_accuracy(pred, y) for name, pred in predictions.items()}
    default = next(iter(predictions))
    correct = {name: pred == y for name, pred in predictions.items()}
    p_values = {
        name: mcnemar_exact_p(correct[name], correct[default])
        for name in predictions
        if name != default
    }
    winners = [
        name for name, p in p_values.items() if p < level and balanced[name] > balanced[default]
    ]
    chosen = max(winners, key=balanced.get) if winners else default
    return chosen, balanced, p_values


def without_feedback(matrix: LabelMatrix) -> np.ndarray:
    """The label matrix with the feedback LFs' votes turned into abstains."""
    blind = matrix.L.copy()
    blind[:, [j for j, s in enumerate(matrix.sources) if s == "feedback"]] = ABSTAIN
    return blind


def label_store(
    task: TaskSpec, store: ExampleStore, sources: Sequence[str] = SOURCES, backend=None
) -> LabeledData:
    """Everything the store knows about `task`, labeled by its LFs from `sources` (prompt
    LF scores are cached in the store): what `protege lf report` and `protege errors` show."""
    return label_examples(
        task, gather(store, task), task_lfs(task, sources, backend=backend, cache=store)
    )
