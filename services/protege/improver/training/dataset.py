"""What a specialist learns from: texts with soft targets and a weight each.

Soft targets come from the label model (a probability per label); gold examples
(reviewer labels, a gold train split) are one-hot and win over a soft label for
the same text.

>>> data = TrainingSet.build(
...     ["HAM", "SPAM"],
...     soft_texts=["subscribe to me", "nice song"], soft_probs=[[0.2, 0.8], [0.9, 0.1]],
...     gold_texts=["nice song"], gold_labels=["HAM"], gold_weight=2.0,
... )
>>> data.texts, data.weights.tolist()
(['subscribe to me', 'nice song'], [1.0, 2.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from protege.improver.data.records import text_hash

if TYPE_CHECKING:
    from protege.improver.labeling.labeled import LabeledData


def label_indices(labels: Sequence[str], values: Sequence) -> np.ndarray:
    """Gold labels as column indices; accepts label names or integer indices."""
    values = list(values)
    if values and isinstance(values[0], str):
        index = {name: i for i, name in enumerate(labels)}
        try:
            return np.array([index[v] for v in values], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"unknown label {exc.args[0]!r}; labels are {list(labels)}") from None
    out = np.asarray(values, dtype=np.int64).reshape(-1)
    if out.size and (out.min() < 0 or out.max() >= len(labels)):
        raise ValueError(f"label index out of range 0..{len(labels) - 1}")
    return out


@dataclass(frozen=True)
class TrainingSet:
    labels: list[str]
    texts: list[str]
    targets: np.ndarray  # [N, C] float32, each row a distribution over `labels`
    weights: np.ndarray  # [N] float32
    gold: np.ndarray  # [N] bool: the row is a gold (one-hot) example

    def __post_init__(self) -> None:
        n, c = len(self.texts), len(self.labels)
        if self.targets.shape != (n, c) or self.weights.shape != (n,) or self.gold.shape != (n,):
            raise ValueError(
                f"shapes disagree: {n} texts, targets {self.targets.shape}, "
                f"weights {self.weights.shape}, {c} labels"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def build(
        cls,
        labels: Sequence[str],
        *,
        soft_texts: Sequence[str] = (),
        soft_probs: np.ndarray | Sequence[Sequence[float]] | None = None,
        gold_texts: Sequence[str] = (),
        gold_labels: Sequence = (),
        gold_weight: float = 1.0,
    ) -> TrainingSet:
        """Merge soft-labeled and gold examples. Soft rows that are all-NaN, all-zero or
        exactly uniform carry no information (every LF abstained) and are dropped."""
        labels = list(labels)
        c = len(labels)
        gold_idx = label_indices(labels, gold_labels)
        if len(gold_idx) != len(gold_texts):
            raise ValueError(f"{len(gold_texts)} gold texts but {len(gold_idx)} gold labels")
        gold_set = set(gold_texts)
        probs = np.zeros((0, c)) if soft_probs is None else np.asarray(soft_probs, dtype=np.float64)
        if len(probs) != len(soft_texts):
            raise ValueError(f"{len(soft_texts)} soft texts but {len(probs)} probability rows")
        probs = np.nan_to_num(probs.reshape(len(soft_texts), c), nan=0.0)
        sums = probs.sum(axis=1)
        informative = (sums > 0) & ~np.all(np.isclose(probs, sums[:, None] / c), axis=1)
        keep = [i for i, t in enumerate(soft_texts) if informative[i] and t not in gold_set]
        soft = probs[keep] / sums[keep, None]
        texts = [soft_texts[i] for i in keep] + list(gold_texts)
        targets = np.concatenate([soft, np.eye(c)[gold_idx]]).astype(np.float32)
        weights = np.concatenate([np.ones(len(keep)), np.full(len(gold_idx), gold_weight)])
        gold = np.concatenate([np.zeros(len(keep), bool), np.ones(len(gold_idx), bool)])
        return cls(labels, texts, targets, weights.astype(np.float32), gold)

    @classmethod
    def from_labeled(cls, labeled: LabeledData, gold_weight: float | None = None) -> TrainingSet:
        """What a specialist trains on: the label model's probabilistic labels on the
        train split plus the train split's gold (one-hot; a gold text is not also a soft
        row). Holdout texts are left out entirely."""
        gold = labeled.train_gold()
        gold_hashes = {text_hash(g.text) for g in gold}
        rows = [
            i
            for i in labeled.training_rows()
            if text_hash(labeled.points[i].text) not in gold_hashes
        ]
        weight = labeled.task.training.gold_weight if gold_weight is None else gold_weight
        return cls.build(
            labeled.task.label_names,
            soft_texts=[labeled.points[i].text for i in rows],
            soft_probs=labeled.probs[rows] if rows else None,
            gold_texts=[g.text for g in gold],
            gold_labels=[g.label for g in gold],
            gold_weight=weight,
        )

    @classmethod
    def from_gold(cls, labels: Sequence[str], texts: Sequence[str], gold: Sequence) -> TrainingSet:
        return cls.build(labels, gold_texts=texts, gold_labels=gold)

    def subset(self, rows: np.ndarray | Sequence[int]) -> TrainingSet:
        rows = np.asarray(rows, dtype=np.int64)
        return TrainingSet(
            self.labels,
            [self.texts[i] for i in rows],
            self.targets[rows],
            self.weights[rows],
            self.gold[rows],
        )

    def split(
        self, fraction: float, seed: int, among: np.ndarray | None = None
    ) -> tuple[TrainingSet, TrainingSet]:
        """(rest, held_out): a seeded, per-label stratified hold-out of `fraction` of the
        rows, or of the rows where the boolean mask `among` is true."""
        rest, held = self.split_rows(fraction, seed, among)
        return self.subset(rest), self.subset(held)

    def split_rows(
        self, fraction: float, seed: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of `split`: (rest, held_out)."""
        rng = np.random.default_rng(seed)
        hard = self.targets.argmax(axis=1)
        eligible = np.ones(len(self), bool) if among is None else np.asarray(among, bool)
        held: list[int] = []
        for c in range(len(self.labels)):
            rows = np.flatnonzero((hard == c) & eligible)
            rng.shuffle(rows)
            held.extend(rows[: round(fraction * len(rows))].tolist())
        held_mask = np.zeros(len(self), bool)
        held_mask[held] = True
        return np.flatnonzero(~held_mask), np.flatnonzero(held_mask)
