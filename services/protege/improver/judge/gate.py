"""The gate: a candidate serves only when it is measurably better than the champion.

Checks, all on the same held-out gold examples:

1. accuracy >= `min_accuracy` (an absolute floor);
2. against the champion (when there is one): accuracy gain >= `min_gain`, and the
   gain is significant under a one-sided paired test at `significance`
   (exact McNemar on the discordant pairs, or a paired bootstrap);
3. no class's recall falls by more than `max_class_drop` below the champion's.

A failed check becomes a reason in the decision; the caller records it (a
`rejected` ModelEvent) and the champion keeps serving.

>>> import numpy as np
>>> mcnemar_exact_p(np.array([1, 1, 1, 1, 1, 1, 0]), np.array([0, 0, 0, 0, 0, 0, 1]))
0.0625
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb

import numpy as np

from protege.improver.judge.evaluate import Metrics
from protege.taskspec import GateSpec


def mcnemar_exact_p(candidate_correct: np.ndarray, champion_correct: np.ndarray) -> float:
    """One-sided exact McNemar p-value for "the candidate is right more often".

    Only discordant pairs count: b = candidate right and champion wrong, c = the
    reverse; under H0 b ~ Binomial(b + c, 1/2); p = P(B >= b)."""
    cand, champ = np.asarray(candidate_correct, bool), np.asarray(champion_correct, bool)
    b = int(np.sum(cand & ~champ))
    c = int(np.sum(~cand & champ))
    n = b + c
    if n == 0:
        return 1.0
    return float(sum(comb(n, k) for k in range(b, n + 1)) / 2**n)


def paired_bootstrap_p(
    candidate_correct: np.ndarray, champion_correct: np.ndarray, rounds: int = 2000, seed: int = 0
) -> float:
    """One-sided paired bootstrap p-value: the share of resamples (examples drawn with
    replacement, both models together) in which the candidate does not gain."""
    diff = np.asarray(candidate_correct, float) - np.asarray(champion_correct, float)
    if not len(diff):
        return 1.0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(diff), size=(rounds, len(diff)))
    gains = diff[draws].mean(axis=1)
    return float((np.sum(gains <= 0) + 1) / (rounds + 1))


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed; empty when it passed
    gain: float | None = None  # candidate accuracy minus champion's
    p_value: float | None = None
    class_drops: dict[str, float] = field(default_factory=dict)  # label -> recall lost

    def metrics(self) -> dict[str, float | str | None]:
        """For the ModelEvent and the registry."""
        return {
            "gate_passed": "yes" if self.passed else "no",
            "gain": self.gain,
            "p_value": self.p_value,
            "max_class_drop": max(self.class_drops.values(), default=0.0),
        }


def decide(
    spec: GateSpec,
    candidate: Metrics,
    candidate_correct: np.ndarray,
    champion: Metrics | None = None,
    champion_correct: np.ndarray | None = None,
    *,
    seed: int = 0,
) -> GateDecision:
    """Apply the gate. `*_correct` are per-example booleans on the same gold examples
    in the same order. Without a champion only the absolute floor applies."""
    reasons: list[str] = []
    if candidate.accuracy < spec.min_accuracy:
        reasons.append(
            f"accuracy {candidate.accuracy:.4f} is below the minimum {spec.min_accuracy:.4f}"
        )
    if champion is None or champion_correct is None:
        return GateDecision(passed=not reasons, reasons=reasons)

    if len(candidate_correct) != len(champion_correct):
        raise ValueError("candidate and champion were scored on different examples")
    gain = candidate.accuracy - champion.accuracy
    if spec.test == "mcnemar":
        p_value = mcnemar_exact_p(candidate_correct, champion_correct)
    else:
        p_value = paired_bootstrap_p(
            candidate_correct, champion_correct, spec.bootstrap_rounds, seed
        )
    if gain < spec.min_gain:
        reasons.append(
            f"accuracy gain {gain:+.4f} over the champion "
            f"({champion.accuracy:.4f}) is below the required {spec.min_gain:+.4f}"
        )
    if p_value >= spec.significance:
        reasons.append(
            f"the gain is not significant: {spec.test} p = {p_value:.4f} >= {spec.significance}"
        )
    drops = {
        label: recall_before - candidate.per_class_recall.get(label, 0.0)
        for label, recall_before in champion.per_class_recall.items()
    }
    for label, drop in sorted(drops.items(), key=lambda kv: -kv[1]):
        if drop > spec.max_class_drop:
            reasons.append(f"recall of {label} falls by {drop:.4f} (> {spec.max_class_drop:.4f})")
    return GateDecision(
        passed=not reasons,
        reasons=reasons,
        gain=gain,
        p_value=p_value,
        class_drops={k: v for k, v in drops.items() if v > 0},
    )
