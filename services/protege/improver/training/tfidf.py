"""TF-IDF (word 1-2 + char 2-5 grams) + logistic regression: microseconds per text.

Soft targets become sample weights: each text appears once per label it has
probability mass on, weighted by that probability (times the row's weight).
The n-gram vocabulary and IDF are fitted on the distinct texts, so that the
expansion does not distort document frequencies.
"""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from protege.artifact import SpecialistFiles
from protege.improver.training.dataset import TrainingSet
from protege.improver.training.export import tfidf_to_onnx
from protege.taskspec import TrainingSpec

NAME = "tfidf-lr"
# Probability mass below this is dropped from the expansion: it costs rows, not accuracy.
MIN_TARGET_MASS = 1e-3
# Char n-grams seen in a single text are mostly noise and bloat the ONNX vocabulary.
CHAR_MIN_DF = 2


def features() -> FeatureUnion:
    # skl2onnx cannot convert analyzer="char_wb"; "char" converts and scores the same here.
    return FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char", ngram_range=(2, 5), sublinear_tf=True, min_df=CHAR_MIN_DF
                ),
            ),
        ]
    )


def fit_features(texts: list[str]) -> FeatureUnion:
    """Fit the n-gram vocabularies. On tiny corpora some n-gram lengths can be missing
    from the vocabulary, which makes the ONNX TfIdfVectorizer invalid: those vectorizers
    are refitted with the n-gram range they actually support."""
    union = features()
    if len(texts) < 20 * CHAR_MIN_DF:  # too few texts for a document-frequency cut
        union.transformer_list[1][1].set_params(min_df=1)
    union.fit(texts)
    for _, vectorizer in union.transformer_list:
        low, high = vectorizer.ngram_range
        sizes = {_ngram_size(term, vectorizer.analyzer) for term in vectorizer.vocabulary_}
        longest = max(
            (n for n in range(low, high + 1) if set(range(low, n + 1)) <= sizes), default=low
        )
        if longest < high:
            vectorizer.set_params(ngram_range=(low, longest)).fit(texts)
    return union


def _ngram_size(term: str, analyzer: str) -> int:
    return len(term) if analyzer == "char" else len(term.split(" "))


def expand(data: TrainingSet) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, hard labels, sample weights): one row per (text, label with mass).

    A label no row carries still gets a placeholder row of negligible weight, so that
    the model keeps one output column per task label."""
    rows, cols = np.nonzero(data.targets >= MIN_TARGET_MASS)
    texts = [data.texts[i] for i in rows]
    y = cols.astype(np.int64)
    w = (data.targets[rows, cols] * data.weights[rows]).astype(np.float64)
    missing = sorted(set(range(len(data.labels))) - set(y.tolist()))
    if missing:
        texts += [""] * len(missing)
        y = np.concatenate([y, np.array(missing, dtype=np.int64)])
        w = np.concatenate([w, np.full(len(missing), 1e-6)])
    return texts, y, w


def fit(data: TrainingSet, spec: TrainingSpec) -> Pipeline:
    """A fitted sklearn pipeline whose `predict_proba` columns follow `data.labels`."""
    vectorizer = fit_features(sorted(set(data.texts)))
    texts, y, w = expand(data)
    clf = LogisticRegression(C=spec.tfidf_c, max_iter=2000, random_state=spec.seed)
    clf.fit(vectorizer.transform(texts), y, sample_weight=w)
    return Pipeline([("features", vectorizer), ("clf", clf)])


def train(data: TrainingSet, spec: TrainingSpec, progress: bool = True) -> SpecialistFiles:
    """Fit and export: the specialist's files, ready for a model folder."""
    with _progress(progress, f"{NAME}: fit {len(data)} texts") as bar:
        pipeline = fit(data, spec)
        bar.update(1)
        bar.set_description(f"{NAME}: export ONNX")
        model = tfidf_to_onnx(pipeline)
        bar.update(1)
    return SpecialistFiles(model=NAME, onnx=model)


def _progress(enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=2, desc=description, disable=not enabled, leave=False)
