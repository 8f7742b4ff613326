"""The gate: a candidate serves only when it is measurably better than what serves now.

All checks are on the same exam rows (trusted held-out gold), as paired one-sided tests
(exact McNemar on the discordant pairs, or a paired bootstrap):

1. accuracy >= `min_accuracy` (an absolute floor);
2. with a champion: the accuracy gain over it is >= `min_gain` and significant;
3. without one (the first candidate), "no champion" is no pass: it must beat, each
   significantly, every trivial answer the round has: the majority class, the
   reviews-only model (the same family trained on the reviewed rows alone) and the FM
   (on the exam rows with an FM answer);
4. with a champion: no class with at least `min_class_support` exam rows loses more
   than `max_class_drop` of recall, significantly.

Corrections. Beating *every* trivial answer is an intersection-union test (Berger,
1982): it passes only when each test rejects, so a wrong pass needs a wrong rejection
of at least one true null, and each test at level alpha keeps the whole at alpha; no
split of alpha is needed there. The class check rejects when *any* class drops, so its
chances add up: each of the m checked classes is tested at `significance / m`
(Bonferroni; Holm's first step, all that an any-class rule uses). And the same exam rows
are reused round after round, so `alpha` for the k-th decision on one exam generation
is `spent_alpha(significance, k)` (see `judge.spending`).

Every decision carries a Wilson interval for the candidate's accuracy and a paired
bootstrap interval for each gain, at `confidence_level`.

A failed check becomes a reason in the decision; the caller records it (a `rejected`
ModelEvent) and the champion keeps serving.

>>> import numpy as np
>>> mcnemar_exact_p(np.array([1, 1, 1, 1, 1, 1, 0]), np.array([0, 0, 0, 0, 0, 0, 1]))
0.0625
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from math import pi, sqrt
from statistics import NormalDist

import numpy as np

from protege.stats import mcnemar_exact_p
from protege.taskspec import GateSpec


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


def wilson_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion `correct / n` (sound at small n and at 0 or 1)."""
    if n == 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_bootstrap_interval(
    candidate_correct: np.ndarray,
    rival_correct: np.ndarray,
    level: float = 0.95,
    rounds: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the accuracy gain, resampling rows (both models together)."""
    diff = np.asarray(candidate_correct, float) - np.asarray(rival_correct, float)
    if not len(diff):
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    gains = diff[rng.integers(0, len(diff), size=(rounds, len(diff)))].mean(axis=1)
    low, high = np.quantile(gains, [0.5 - level / 2, 0.5 + level / 2])
    return (float(low), float(high))


def spent_alpha(significance: float, decision: int) -> float:
    """The level of the `decision`-th (1, 2, ...) gate decision on the same exam rows:
    `significance * 6 / (pi^2 k^2)`, which sums to `significance` over every decision,
    so that retrying against one exam cannot buy a false pass."""
    return significance * 6.0 / (pi * pi * decision * decision)


@dataclass(frozen=True)
class Rival:
    """What the candidate is compared with: the champion, or a trivial answer."""

    name: str  # champion | majority | reviews_only | foundation
    correct: np.ndarray  # bool, per compared exam row
    rows: np.ndarray | None = None  # the exam rows compared (None: all of them)


@dataclass(frozen=True)
class Comparison:
    """One paired test of the candidate against a rival."""

    rival: str
    rows: int
    candidate_accuracy: float
    rival_accuracy: float
    gain: float
    gain_interval: tuple[float, float]
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed; empty when it passed
    alpha: float = 0.05  # the level this decision's tests ran at
    accuracy_interval: tuple[float, float] = (0.0, 1.0)
    comparisons: list[Comparison] = field(default_factory=list)
    class_drops: dict[str, float] = field(default_factory=dict)  # label -> significant fall
    classes_checked: int = 0

    @property
    def deciding(self) -> Comparison | None:
        """The comparison that bound the decision: the champion's, or the trivial answer
        with the largest p-value."""
        return max(self.comparisons, key=lambda c: c.p_value, default=None)

    @property
    def gain(self) -> float | None:
        return self.deciding.gain if self.deciding else None

    @property
    def p_value(self) -> float | None:
        return self.deciding.p_value if self.deciding else None

    def metrics(self) -> dict[str, float | str | None]:
        """For the ModelEvent and the registry."""
        deciding = self.deciding
        out: dict[str, float | str | None] = {
            "gate_passed": "yes" if self.passed else "no",
            "versus": deciding.rival if deciding else None,
            "gain": self.gain,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "accuracy_ci_low": self.accuracy_interval[0],
            "accuracy_ci_high": self.accuracy_interval[1],
            "gain_ci_low": deciding.gain_interval[0] if deciding else None,
            "gain_ci_high": deciding.gain_interval[1] if deciding else None,
            "max_class_drop": max(self.class_drops.values(), default=0.0),
            "classes_checked": float(self.classes_checked),
        }
        for c in self.comparisons:
            out[f"{c.rival}.accuracy"] = c.rival_accuracy
            out[f"{c.rival}.p_value"] = c.p_value
        return out

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "alpha": self.alpha,
            "accuracy_interval": self.accuracy_interval,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "class_drops": self.class_drops,
            "classes_checked": self.classes_checked,
        }


def compare(
    spec: GateSpec, candidate_correct: np.ndarray, rival: Rival, seed: int = 0
) -> Comparison:
    """The paired test of the candidate against `rival` on the rows they share."""
    cand = np.asarray(candidate_correct, bool)
    if rival.rows is not None:
        cand = cand[rival.rows]
    other = np.asarray(rival.correct, bool)
    if len(cand) != len(other):
        raise ValueError(f"candidate and {rival.name} were scored on different rows")
    if spec.test == "mcnemar":
        p_value = mcnemar_exact_p(cand, other)
    else:
        p_value = paired_bootstrap_p(cand, other, spec.bootstrap_rounds, seed)
    n = len(cand)
    return Comparison(
        rival=rival.name,
        rows=n,
        candidate_accuracy=float(cand.mean()) if n else float("nan"),
        rival_accuracy=float(other.mean()) if n else float("nan"),
        gain=float(cand.mean() - other.mean()) if n else float("nan"),
        gain_interval=paired_bootstrap_interval(
            cand, other, spec.confidence_level, spec.bootstrap_rounds, seed
        ),
        p_value=p_value,
    )


def class_drops(
    spec: GateSpec,
    labels: Sequence[str],
    gold: np.ndarray,
    candidate_correct: np.ndarray,
    champion_correct: np.ndarray,
) -> tuple[dict[str, float], int]:
    """({label: recall lost} for classes whose fall exceeds `max_class_drop` and is
    significant at `significance / m`, m), over the m classes with enough exam rows."""
    checked = [c for c in range(len(labels)) if np.sum(gold == c) >= spec.min_class_support]
    level = spec.significance / max(len(checked), 1)
    drops = {}
    for c in checked:
        rows = gold == c
        drop = float(champion_correct[rows].mean() - candidate_correct[rows].mean())
        if drop > spec.max_class_drop:
            p_value = mcnemar_exact_p(champion_correct[rows], candidate_correct[rows])
            if p_value < level:
                drops[labels[c]] = drop
    return drops, len(checked)


def decide(
    spec: GateSpec,
    labels: Sequence[str],
    gold: np.ndarray,
    candidate_correct: np.ndarray,
    *,
    champion: Rival | None = None,
    baselines: Sequence[Rival] = (),
    alpha: float | None = None,
    seed: int = 0,
) -> GateDecision:
    """Apply the gate (see module docstring). `gold` holds the exam's label indices and
    `candidate_correct` whether the candidate got each row right; rivals are scored on
    the same rows (or on `rows` of them). With a `champion` the candidate must beat it;
    without, it must beat every one of `baselines`. `alpha` defaults to `significance`."""
    alpha = spec.significance if alpha is None else alpha
    gold = np.asarray(gold, np.int64)
    correct = np.asarray(candidate_correct, bool)
    n, right = len(correct), int(correct.sum())
    accuracy = right / n if n else 0.0
    reasons: list[str] = []
    if accuracy < spec.min_accuracy:
        reasons.append(f"accuracy {accuracy:.4f} is below the minimum {spec.min_accuracy:.4f}")
    rivals = [champion] if champion is not None else list(baselines)
    if not rivals:
        reasons.append("nothing to compare with: no champion and no trivial answer")
    comparisons = [compare(spec, correct, rival, seed) for rival in rivals]
    for c in comparisons:
        if c.p_value >= alpha:
            reasons.append(
                f"not significantly better than the {c.rival.replace('_', '-')} "
                f"({c.candidate_accuracy:.4f} vs {c.rival_accuracy:.4f} on {c.rows} rows): "
                f"{spec.test} p = {c.p_value:.4g} >= alpha {alpha:.4g}"
            )
    drops, checked = {}, 0
    if champion is not None:
        gain = comparisons[0].gain
        if gain < spec.min_gain:
            reasons.append(
                f"accuracy gain {gain:+.4f} over the champion "
                f"({comparisons[0].rival_accuracy:.4f}) is below the required {spec.min_gain:+.4f}"
            )
        drops, checked = class_drops(
            spec, labels, gold, correct, np.asarray(champion.correct, bool)
        )
        for label, drop in sorted(drops.items(), key=lambda kv: -kv[1]):
            reasons.append(
                f"recall of {label} falls by {drop:.4f} (> {spec.max_class_drop:.4f}, "
                f"significant at {spec.significance}/{checked})"
            )
    return GateDecision(
        passed=not reasons,
        reasons=reasons,
        alpha=alpha,
        accuracy_interval=wilson_interval(right, n, spec.confidence_level),
        comparisons=comparisons,
        class_drops=drops,
        classes_checked=checked,
    )
