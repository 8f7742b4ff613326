"""Scores on held-out gold data: accuracy, macro-F1, per-class recall, ECE, latency.

A specialist is evaluated through `protege.serving.specialist.Specialist`, the
class that serves it, so that what is measured is exactly what serves. The
foundation model's predictions are passed in as arrays (it is far too slow on
CPU to run inside a training round).

>>> import numpy as np
>>> m = score(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), [0, 1, 1], ["HAM", "SPAM"])
>>> round(m.accuracy, 3), m.per_class_recall
(0.667, {'HAM': 1.0, 'SPAM': 0.5})
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from protege.improver.training.dataset import label_indices

ECE_BINS = 15  # the usual choice (Guo et al., 2017)
LATENCY_SAMPLES = 50  # batch-1 calls timed for the p50; enough for a stable median
LATENCY_WARMUP = 3


@dataclass(frozen=True)
class Metrics:
    accuracy: float
    macro_f1: float
    per_class_recall: dict[str, float]
    ece: float
    n: int
    p50_latency_ms: float | None = None

    def flat(self, prefix: str = "") -> dict[str, float]:
        """Numbers only, for MLflow metrics and event payloads: `{prefix}accuracy`, ...,
        `{prefix}recall.<label>`."""
        out = {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}macro_f1": self.macro_f1,
            f"{prefix}ece": self.ece,
            f"{prefix}n": float(self.n),
        }
        if self.p50_latency_ms is not None:
            out[f"{prefix}p50_latency_ms"] = self.p50_latency_ms
        out.update({f"{prefix}recall.{k}": v for k, v in self.per_class_recall.items()})
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def as_probabilities(predictions: np.ndarray | Sequence, n_labels: int) -> np.ndarray:
    """[N, C] probabilities; a 1-D array of label indices becomes one-hot."""
    array = np.asarray(predictions)
    if array.ndim == 1:
        return np.eye(n_labels, dtype=np.float32)[array.astype(np.int64)]
    if array.ndim != 2 or array.shape[1] != n_labels:
        raise ValueError(f"predictions of shape {array.shape}; expected [N, {n_labels}]")
    return array.astype(np.float32)


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: mean |accuracy - confidence| over equal-width confidence bins,
    weighted by each bin's share of examples."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == gold
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def score(
    predictions: np.ndarray | Sequence,
    gold: Sequence,
    labels: Sequence[str],
    p50_latency_ms: float | None = None,
) -> Metrics:
    """Metrics of [N, C] probabilities (or label indices) against gold labels
    (names or indices)."""
    labels = list(labels)
    gold = label_indices(labels, gold)
    probs = as_probabilities(predictions, len(labels))
    if len(probs) != len(gold):
        raise ValueError(f"{len(probs)} predictions for {len(gold)} gold labels")
    predicted = probs.argmax(axis=1)
    recalls, f1s = {}, []
    for c, name in enumerate(labels):
        tp = float(np.sum((predicted == c) & (gold == c)))
        support, claimed = float(np.sum(gold == c)), float(np.sum(predicted == c))
        recall = tp / support if support else float("nan")
        precision = tp / claimed if claimed else 0.0
        if support:
            recalls[name] = recall
            f1s.append(2 * precision * recall / (precision + recall) if tp else 0.0)
    return Metrics(
        accuracy=float(np.mean(predicted == gold)) if len(gold) else float("nan"),
        macro_f1=float(np.mean(f1s)) if f1s else float("nan"),
        per_class_recall=recalls,
        ece=expected_calibration_error(probs, gold),
        n=len(gold),
        p50_latency_ms=p50_latency_ms,
    )


def p50_latency_ms(specialist, texts: Sequence[str], samples: int = LATENCY_SAMPLES) -> float:
    """Median wall time of one batch-1 `predict_proba` call, in milliseconds."""
    texts = list(texts)[: max(samples, 1)] or ["probe"]
    for text in texts[:LATENCY_WARMUP]:
        specialist.predict_proba([text])
    times = []
    for text in texts:
        start = time.perf_counter()
        specialist.predict_proba([text])
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


@dataclass(frozen=True)
class Evaluation:
    metrics: Metrics
    probabilities: np.ndarray  # [N, C] in the task's label order

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def evaluate_specialist(
    folder: Path | str,
    texts: Sequence[str],
    gold: Sequence,
    labels: Sequence[str],
    *,
    latency_samples: int = LATENCY_SAMPLES,
    batch_size: int = 256,
) -> Evaluation:
    """Load the folder as serving does and score it on gold data. An fm-adapter
    candidate is scored from the answers its training job recorded (`answers.json`),
    its latency not measured: the FM deployment serves it, not this process.

    Raises `SpecialistLoadError` when the folder cannot serve (or lacks answers)."""
    from protege.artifact import Specialist, is_adapter, read_answers

    if is_adapter(folder):
        probs = read_answers(folder, list(texts), list(labels))
        return Evaluation(score(probs, gold, labels), probs)
    specialist = Specialist(folder, list(labels))
    texts = list(texts)
    parts = [
        specialist.predict_proba(texts[i : i + batch_size])
        for i in range(0, len(texts), batch_size)
    ]
    probs = np.concatenate(parts) if parts else np.zeros((0, len(labels)), np.float32)
    latency = p50_latency_ms(specialist, texts, latency_samples) if latency_samples else None
    return Evaluation(score(probs, gold, labels, latency), probs)


def side_by_side(metrics: dict[str, Metrics | None]) -> str:
    """A small text table (rows: models) for logs and the CLI."""
    header = f"{'model':<12} {'acc':>7} {'macroF1':>8} {'ECE':>7} {'p50 ms':>8} {'min recall':>11}"
    lines = [header]
    for name, m in metrics.items():
        if m is None:
            continue
        lat = "-" if m.p50_latency_ms is None else f"{m.p50_latency_ms:.2f}"
        worst = min(m.per_class_recall.values()) if m.per_class_recall else float("nan")
        lines.append(
            f"{name:<12} {m.accuracy:>7.3f} {m.macro_f1:>8.3f} {m.ece:>7.3f} "
            f"{lat:>8} {worst:>11.3f}"
        )
    return "\n".join(lines)
