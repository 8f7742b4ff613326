"""Label models: from a label matrix to one probabilistic label per covered example.

Two are offered: Snorkel's ``LabelModel`` (learns each LF's accuracy from their
agreements, without labels) and majority vote. Published results show majority vote
sometimes wins, so where gold data exists :func:`fit_label_model` scores both on it
and keeps the better, recording the scores and the reason.

Example
-------
>>> import numpy as np
>>> L = np.array([[1, 1, -1], [0, -1, 0], [-1, -1, -1]])
>>> fit = fit_label_model(L, cardinality=2, kind="majority")
>>> fit.covered.tolist(), fit.probs[0].tolist()
([True, True, False], [0.0, 1.0])
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import numpy as np

from protege.improver.labeling.functions import ABSTAIN
from protege.taskspec import LabelModelSpec

log = logging.getLogger(__name__)

KINDS = ("snorkel", "majority")
# Snorkel's model needs agreements among at least three voting LFs to identify their accuracies.
SNORKEL_MIN_LFS = 3


def majority_proba(L: np.ndarray, cardinality: int) -> np.ndarray:
    """Snorkel's majority vote: the most voted label (ties split); uniform where nobody voted."""
    from snorkel.labeling.model import MajorityLabelVoter

    if not L.size:
        return np.full((len(L), cardinality), 1.0 / cardinality)
    return MajorityLabelVoter(cardinality=cardinality).predict_proba(L)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Snorkel's model is tiny: one thread is faster than contending for a shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MajorityVote:
    """Snorkel's ``MajorityLabelVoter`` behind the same fit/predict_proba as the others."""

    kind = "majority"

    def __init__(self, cardinality: int):
        self.cardinality = cardinality

    def fit(self, L: np.ndarray) -> MajorityVote:
        return self

    def predict_proba(self, L: np.ndarray) -> np.ndarray:
        return majority_proba(L, self.cardinality)


class SnorkelLabelModel:
    """Snorkel 0.10's LabelModel with the task's hyperparameters."""

    kind = "snorkel"

    def __init__(self, cardinality: int, spec: LabelModelSpec | None = None):
        self.cardinality = cardinality
        self.spec = spec or LabelModelSpec()
        self._model = None

    def fit(self, L: np.ndarray) -> SnorkelLabelModel:
        from snorkel.labeling.model import LabelModel

        # An LF that never votes carries no information, but costs (M*C)^2 per epoch:
        # 77 labels x 34 LFs is ~1 s an epoch on 2 cores. Fit on the LFs that vote.
        self._active = (L != ABSTAIN).any(axis=0)
        with _torch_threads(1):
            model = LabelModel(cardinality=self.cardinality, verbose=False)
            model.fit(
                L[:, self._active],
                n_epochs=self.spec.epochs,
                lr=self.spec.learning_rate,
                l2=self.spec.l2,
                seed=self.spec.seed,
                progress_bar=False,
            )
        self._model = model
        return self

    def predict_proba(self, L: np.ndarray) -> np.ndarray:
        if self._model is None:
            raise RuntimeError("fit the label model first")
        with _torch_threads(1):
            return np.asarray(self._model.predict_proba(L[:, self._active]), dtype=np.float64)


def to_labels(probs: np.ndarray, covered: np.ndarray, seed: int = 0) -> np.ndarray:
    """Argmax label per example, ties broken at random (seeded); -1 where not covered."""
    rng = np.random.default_rng(seed)
    labels = np.full(len(probs), ABSTAIN, dtype=np.int64)
    for i in np.flatnonzero(covered):
        row = probs[i]
        best = np.flatnonzero(np.isclose(row, row.max()))
        labels[i] = best[0] if len(best) == 1 else rng.choice(best)
    return labels


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean recall over the labels present in `y` (y >= 0; an abstain is wrong). The
    reviewed rows labelers are compared on are the review queue's picks, not a sample
    of the traffic: on gold that is 80 % one label, plain accuracy crowns a labeler
    that answers that label everywhere."""
    known = y >= 0
    labels = np.unique(y[known])
    if not len(labels):
        return float("nan")
    return float(np.mean([np.mean(pred[known & (y == c)] == c) for c in labels]))


def accuracy(
    pred: np.ndarray, y: np.ndarray, seed: int = 0, cardinality: int | None = None
) -> float:
    """Accuracy over all examples with a known label (y >= 0); an abstain counts as a
    random guess when `cardinality` is given (Snorkel's ``tie_break_policy='random'``),
    as wrong otherwise."""
    known = y >= 0
    if not known.any():
        return float("nan")
    pred = pred[known].copy()
    if cardinality is not None:
        rng = np.random.default_rng(seed + 1)
        guess = pred == ABSTAIN
        pred[guess] = rng.integers(0, cardinality, guess.sum())
    return float((pred == y[known]).mean())


def exclude_labels(probs: np.ndarray, excluded: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Zero the labels reviewers ruled out and renormalize; returns (probs, still_valid):
    an example with every voted label ruled out loses its label."""
    probs = probs.copy()
    valid = np.ones(len(probs), dtype=bool)
    for i, labels in enumerate(excluded):
        if not labels:
            continue
        probs[i, list(labels)] = 0.0
        total = probs[i].sum()
        if total <= 0:
            valid[i] = False
        else:
            probs[i] /= total
    return probs, valid


@dataclass
class LabelModelFit:
    """Probabilistic labels (rows of uncovered examples are meaningless: see `covered`)
    and the record of which model made them and why."""

    kind: str
    probs: np.ndarray
    covered: np.ndarray
    choice: dict = field(default_factory=dict)
    model: object | None = field(default=None, repr=False)
    candidates: dict = field(default_factory=dict, repr=False)  # kind -> fitted model

    def labels(self, seed: int = 0) -> np.ndarray:
        return to_labels(self.probs, self.covered, seed)

    def summary(self) -> dict:
        """Which model was chosen and why, for the registry."""
        name = self.choice.get("stacked", {}).get("chosen") or self.choice.get("chosen", self.kind)
        return {"name": name, **self.choice}


def make_model(kind: str, cardinality: int, spec: LabelModelSpec | None = None):
    if kind == "snorkel":
        return SnorkelLabelModel(cardinality, spec)
    if kind == "majority":
        return MajorityVote(cardinality)
    raise ValueError(f"unknown label model {kind!r}; choose from {KINDS}")


def fit_label_model(
    L: np.ndarray,
    cardinality: int,
    spec: LabelModelSpec | None = None,
    kind: str | None = None,
    gold_L: np.ndarray | None = None,
    gold_y: np.ndarray | None = None,
) -> LabelModelFit:
    """Fit on `L` and label its rows.

    With ``kind='auto'`` (the spec's default), both models are scored on the gold
    examples (`gold_L`, `gold_y`, y = -1 where unknown) and the better one is kept;
    without enough gold the default is Snorkel's model when there are at least
    three LFs, majority vote otherwise. Ties go to majority vote, the simpler.
    """
    spec = spec or LabelModelSpec()
    kind = kind or spec.kind
    covered = (L != ABSTAIN).any(axis=1) if L.size else np.zeros(len(L), dtype=bool)
    n_lfs = L.shape[1] if L.ndim == 2 else 0
    n_voting = int((L != ABSTAIN).any(axis=0).sum()) if L.size else 0
    snorkel_ok = n_voting >= SNORKEL_MIN_LFS
    choice: dict = {"requested": kind, "n_lfs": n_lfs, "n_examples": len(L)}

    if kind == "snorkel" and not snorkel_ok:
        choice["reason"] = f"snorkel needs >= {SNORKEL_MIN_LFS} LFs that vote; used majority"
        kind = "majority"
    if kind == "auto":
        candidates = {"majority": MajorityVote(cardinality).fit(L)}
        if snorkel_ok:
            candidates["snorkel"] = SnorkelLabelModel(cardinality, spec).fit(L)
        n_gold = 0
        if gold_L is not None and gold_y is not None and len(gold_L):
            gold_covered = (gold_L != ABSTAIN).any(axis=1) & (gold_y >= 0)
            n_gold = int(gold_covered.sum())
        choice["n_gold"] = n_gold
        if n_gold >= spec.min_gold and len(candidates) > 1:
            scores = {}
            for name, model in candidates.items():
                pred = to_labels(model.predict_proba(gold_L), gold_covered, spec.seed)
                scores[name] = float((pred[gold_covered] == gold_y[gold_covered]).mean())
            choice["gold_accuracy"] = scores
            kind = "snorkel" if scores.get("snorkel", -1) > scores["majority"] else "majority"
            choice["reason"] = f"better on {n_gold} covered gold examples"
        else:
            kind = "snorkel" if "snorkel" in candidates else "majority"
            choice["reason"] = f"{n_gold} covered gold examples (< {spec.min_gold}): default " + (
                "snorkel" if kind == "snorkel" else f"majority (< {SNORKEL_MIN_LFS} LFs)"
            )
        model = candidates[kind]
    else:
        model = make_model(kind, cardinality, spec).fit(L)
        candidates = {kind: model}
        choice.setdefault("reason", "configured")
    choice["chosen"] = kind
    probs = model.predict_proba(L) if len(L) else np.zeros((0, cardinality))
    log.info("label model: %s", choice)
    return LabelModelFit(kind, probs, covered, choice, model, candidates)
