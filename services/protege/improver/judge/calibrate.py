"""Cascade calibration: how confident must the specialist be to answer alone?

In the cascade the specialist answers when its confidence is >= the threshold and
the foundation model answers otherwise. The calibrated threshold is the lowest
one at which the cascade's accuracy on gold data is at least the target
(default: the FM-only accuracy) — the lowest, because every specialist answer
saves an FM call. It is stored in the model's `model.json` for the router.

>>> import numpy as np
>>> spec = np.array([[0.95, 0.05], [0.6, 0.4], [0.55, 0.45]])
>>> fm = np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]])
>>> calibrate_threshold(spec, fm, [0, 1, 1]).threshold  # FM-only accuracy is 1.0
0.95
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from protege.improver.judge.evaluate import as_probabilities
from protege.improver.training.dataset import label_indices


@dataclass(frozen=True)
class CascadeCalibration:
    threshold: float
    cascade_accuracy: float  # at the threshold
    specialist_share: float  # share of examples the specialist answers alone
    target: float
    met: bool  # False: no threshold reaches the target; the FM answers (almost) all

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate_threshold(
    specialist_probs: np.ndarray,
    fm_predictions: np.ndarray | Sequence,
    gold: Sequence,
    target: float | None = None,
    labels: Sequence[str] | None = None,
) -> CascadeCalibration:
    """The lowest confidence threshold whose cascade accuracy is >= `target`.

    `fm_predictions` are FM probabilities [N, C] or label indices [N]; `gold` are
    label indices, or names when `labels` (the column order of both) is given."""
    specialist_probs = np.asarray(specialist_probs, dtype=np.float64)
    n, c = specialist_probs.shape
    gold = label_indices(list(labels) if labels else [str(i) for i in range(c)], gold)
    fm_correct = as_probabilities(fm_predictions, c).argmax(axis=1) == gold
    spec_correct = specialist_probs.argmax(axis=1) == gold
    confidence = specialist_probs.max(axis=1)
    if target is None:
        target = float(fm_correct.mean()) if n else 0.0
    if n == 0:
        return CascadeCalibration(0.0, float("nan"), 0.0, target, False)

    # Candidate thresholds: 0 (the specialist answers everything), then each distinct
    # confidence; at threshold t the specialist answers the rows with confidence >= t.
    order = np.argsort(confidence, kind="stable")
    conf_sorted = confidence[order]
    thresholds = np.concatenate([[0.0], np.unique(conf_sorted)])
    # rows below t go to the FM: count them with searchsorted over the sorted confidences
    below = np.searchsorted(conf_sorted, thresholds, side="left")
    fm_cum = np.concatenate([[0], np.cumsum(fm_correct[order])])
    spec_cum_from_end = np.concatenate([np.cumsum(spec_correct[order][::-1])[::-1], [0]])
    accuracy = (fm_cum[below] + spec_cum_from_end[below]) / n
    ok = np.flatnonzero(accuracy >= target - 1e-12)
    if len(ok):
        i = int(ok[0])
        return CascadeCalibration(
            float(thresholds[i]), float(accuracy[i]), float(1 - below[i] / n), float(target), True
        )
    # Nothing reaches the target: the specialist answers only when it is certain.
    alone = confidence >= 1.0
    accuracy_at_1 = float(np.mean(np.where(alone, spec_correct, fm_correct)))
    return CascadeCalibration(1.0, accuracy_at_1, float(alone.mean()), float(target), False)
