"""Turn per-label continuation log-likelihoods into label probabilities."""

from __future__ import annotations

import numpy as np


def label_probabilities(
    loglik: np.ndarray, token_counts: np.ndarray, length_normalize: bool
) -> np.ndarray:
    """Softmax over labels of each text's label log-likelihoods.

    `loglik` is [N, C] summed log-probs of each label's tokens; `token_counts` is
    [C] (or [N, C]) tokens per label. Length normalization scores by the mean
    token log-prob, so that long label names are not penalized for their length.
    """
    scores = loglik / np.maximum(token_counts, 1) if length_normalize else loglik
    scores = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(scores)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
