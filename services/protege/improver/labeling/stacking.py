"""Gold stacking: once reviewers have labeled some training texts, learn from them how
much each labeling function's vote is worth *together with the text itself*.

Why. The unsupervised label model weighs LFs by their agreements only, and labels
nothing where every LF abstains; a task's weak HAM rules (60-70 % accurate) then drag
the specialist below a model trained on the reviews alone. A logistic regression on
the reviewed rows, over the text's n-grams and the one-hot votes of the non-feedback
LFs, learns each vote's real worth and labels every text; the specialist distilled
from it on all the traffic beats the reviews-only model (bench/quality_youtube.py).

Feedback LFs are left out of the features: they vote exactly on the reviewed rows, so
a model fitted there would learn to trust them and nothing else. Reviewed rows get
cross-fitted probabilities (each from a model that did not see it), so the LF report's
accuracy on them is honest, and the round can compare, on the same reviewed rows and
without leakage, the stack, the text alone (the reviews without any LF) and the
unsupervised label model, and keep the best (`labeling.labeled`).

>>> import numpy as np
>>> texts = ["buy now", "nice song", "sub to me", "love it"] * 5
>>> L = np.array([[1], [-1], [1], [-1]] * 5)
>>> gold_y = np.array([1, 0, 1, 0] * 5)
>>> stack = stack_on_gold(texts, L, gold_y, np.ones(20, bool), cardinality=2, min_gold=8)
>>> stack.probs.argmax(axis=1)[:4].tolist(), stack.gold_rows
([1, 0, 1, 0], 20)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion

from protege.improver.labeling.functions import ABSTAIN

FOLDS = 5


@dataclass(frozen=True)
class Stack:
    """Probabilities for every row from the reviewed rows: with the LFs' votes
    (`probs`) and from the text alone (`text_probs`, what the reviews teach without any
    LF), each cross-fitted on the reviewed rows, where their accuracies are measured."""

    probs: np.ndarray  # [N, C]
    text_probs: np.ndarray  # [N, C]
    gold_rows: int
    gold_accuracy: float  # cross-fitted, on the reviewed training rows
    text_gold_accuracy: float
    vote_features: int
    embedded: bool = False

    def summary(self) -> dict:
        return {
            "gold_rows": self.gold_rows,
            "cross_fitted_gold_accuracy": round(self.gold_accuracy, 4),
            "text_only_cross_fitted_gold_accuracy": round(self.text_gold_accuracy, 4),
            "features": f"word 1-2 + char 2-4 grams{' + MiniLM' if self.embedded else ''}, "
            f"{self.vote_features} LF vote columns",
        }


def vote_features(L: np.ndarray, cardinality: int) -> sparse.csr_matrix:
    """One column per (LF, label): 1 where that LF voted that label."""
    rows, lfs = np.nonzero(L != ABSTAIN)
    cols = lfs * cardinality + L[rows, lfs]
    shape = (len(L), L.shape[1] * cardinality)
    return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)


def text_features(texts: list[str]) -> sparse.csr_matrix:
    union = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)),
        ]
    )
    return union.fit_transform(texts).tocsr()


def _fit_predict(X, y, rows_fit, rows_out, cardinality: int, c: float, seed: int) -> np.ndarray:
    """Probabilities over every label for `rows_out`, from a model fitted on `rows_fit`
    (labels the fitting rows lack get probability 0). Classes are weighted inversely to
    their share of the reviews: the review queue picks texts near the boundary, not a
    sample of the traffic, so early reviews can lean one way (the demo's first 30 were
    mostly one label) and an unweighted fit then labels all the traffic that way."""
    model = LogisticRegression(C=c, max_iter=3000, random_state=seed, class_weight="balanced")
    model.fit(X[rows_fit], y[rows_fit])
    out = np.zeros((len(rows_out), cardinality))
    out[:, model.classes_] = model.predict_proba(X[rows_out])
    return out


def stack_on_gold(
    texts: list[str],
    L: np.ndarray,
    gold_y: np.ndarray,
    fit_rows: np.ndarray,
    cardinality: int,
    *,
    min_gold: int = 20,
    vote_weight: float = 3.0,
    c: float = 10.0,
    seed: int = 0,
    embeddings: np.ndarray | None = None,
) -> Stack | None:
    """Stacked probabilities for all rows, learned on the gold rows within `fit_rows`
    (a boolean mask: the train bucket); None with fewer than `min_gold` such rows or
    fewer than two labels among them. `L` holds the non-feedback LFs' votes; `gold_y`
    is -1 where a row has no gold. `vote_weight` scales the vote columns against the
    unit-norm n-gram rows (a vote is worth more than one n-gram). `embeddings` (unit
    sentence vectors, one row per text), when the task computes them, join the text's
    features: with 77 labels and a few reviews each, meaning generalises where n-grams
    do not."""
    gold = np.flatnonzero(np.asarray(fit_rows, bool) & (gold_y >= 0))
    if len(gold) < min_gold or len(set(gold_y[gold].tolist())) < 2:
        return None
    text = text_features(texts)
    if embeddings is not None:
        text = sparse.hstack([text, sparse.csr_matrix(embeddings)]).tocsr()
    with_votes = sparse.hstack([text, vote_weight * vote_features(L, cardinality)]).tocsr()
    folds = np.random.default_rng(seed).permutation(len(gold)) % FOLDS
    probs, accuracy = _cross_fitted(with_votes, gold_y, gold, folds, cardinality, c, seed)
    text_probs, text_accuracy = _cross_fitted(text, gold_y, gold, folds, cardinality, c, seed)
    return Stack(
        probs,
        text_probs,
        len(gold),
        accuracy,
        text_accuracy,
        L.shape[1] * cardinality,
        embedded=embeddings is not None,
    )


def _cross_fitted(
    X, gold_y: np.ndarray, gold: np.ndarray, folds: np.ndarray, cardinality: int, c, seed
) -> tuple[np.ndarray, float]:
    """(probabilities for every row, accuracy on the gold rows): rows outside `gold` from
    a model fitted on all of it, each gold row from one fitted without its fold."""
    n = X.shape[0]
    others = np.setdiff1d(np.arange(n), gold)
    probs = np.zeros((n, cardinality))
    if len(others):
        probs[others] = _fit_predict(X, gold_y, gold, others, cardinality, c, seed)
    for k in range(FOLDS):
        held, kept = gold[folds == k], gold[folds != k]
        if len(held) and len(set(gold_y[kept].tolist())) >= 2:
            probs[held] = _fit_predict(X, gold_y, kept, held, cardinality, c, seed)
        elif len(held):
            probs[held] = 1.0 / cardinality
    return probs, float((probs[gold].argmax(axis=1) == gold_y[gold]).mean())
