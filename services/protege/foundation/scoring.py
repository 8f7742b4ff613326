"""Turn per-label continuation log-likelihoods into label probabilities, for every
backend alike."""

from __future__ import annotations

from collections.abc import Sequence

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


def label_logprobs(
    token_logprobs: Sequence[float | None], prefix_tokens: int, sequence_tokens: int
) -> list[float]:
    """The log-probs of the label's own tokens in one echoed prompt + label sequence.

    The label adds `sequence_tokens - prefix_tokens` tokens (both counted the same
    way), and they are the sequence's last ones: counting from the end ignores
    whatever an engine puts in front (a BOS token) and its text offsets, which vLLM
    reports as running sums of decoded token lengths, BOS included."""
    added = sequence_tokens - prefix_tokens
    if not 0 < added < len(token_logprobs):
        raise ValueError(f"the label adds {added} tokens to a {len(token_logprobs)}-token sequence")
    tail = list(token_logprobs[-added:])
    if any(lp is None for lp in tail):
        raise ValueError("the endpoint gave no log-prob for a label token")
    return tail


def sequence_probabilities(
    per_sequence: list[list[float]], n_labels: int, length_normalize: bool
) -> np.ndarray:
    """[N, C] probabilities from each (text, label) sequence's label-token log-probs,
    text by text in `prompts.scored_sequences` order (what sequence backends get)."""
    loglik = np.array([sum(lps) for lps in per_sequence], dtype=np.float64)
    counts = np.array([len(lps) for lps in per_sequence], dtype=np.float32)
    return label_probabilities(
        loglik.reshape(-1, n_labels), counts.reshape(-1, n_labels), length_normalize
    )


def label_log_probabilities(loglik, token_counts, length_normalize: bool):
    """`label_probabilities` in torch, as log-probabilities and differentiable: the label
    distribution LoRA training fits is the very one scoring reports.

    `loglik` is a [N, C] tensor, `token_counts` a [C] tensor."""
    import torch

    scores = loglik / token_counts.clamp(min=1) if length_normalize else loglik
    return torch.log_softmax(scores, dim=1)
