"""The review queue: recent predictions ranked by what a review would teach.

A review teaches most where the models are unsure or disagree (Prodigy's
`prefer_uncertain`, Label Studio's and Argilla's score-sorted queues). From the newest
`review.window` predictions of a task, those with fewer than `review.reviews_needed`
distinct reviewers (and none from the asking reviewer), whose text the task's owner
has not labeled already, are ranked by what is cheap to know, never asking the FM:

- `low_margin`: the served answer's top-two probability gap is below `review.low_margin`;
- `model_disagreement`: the specialist and the FM both answered, differently;
- `lf_conflict`: the cheap labeling functions (rules, Python) vote for different labels;
- `label_model_disagreement`: the last round's label model, over every LF's vote
  (prompt LFs from their cache only), prefers another label than the one served;
- `needs_another_review`: someone reviewed it, but fewer than `review.reviews_needed`
  did: a second reviewer who agrees makes it trusted gold, so it comes first;
- `reviewers_disagree`: its reviewers disagree: it stays in the queue for up to
  `review.second_looks` more reviewers (tie-breakers), ahead of everything else.

The score is the uncertainty (1 - margin) plus a weight per signal; items with no
signal are ranked by uncertainty alone (`uncertain`). Ranked items are then taken in
turns across the label each probably has (the label model's, else the specialist's,
else the served one), best first in each: disagreements cluster in one class (a
near-constant FM "disagrees" only with one label), and a batch of reviews that is all
one class teaches a classifier little (measured by `bench/review_queue.py`: the
unstratified queue lost to random sampling on youtube).

An `audit` share of the slots goes to predictions drawn uniformly at random from a
fixed random subset of traffic (`is_audit`: by a hash of the prediction id, so that
anyone can tell later which reviews were audits). Ranked slots never take audit-subset
items, so the reviews of that subset are a uniform sample of traffic: an unbiased
estimate of accuracy however skewed the ranked reviews are. Slots the ranked items
cannot fill (a short queue) take more audit items, so no open item is hidden.

Until a task holds `review.random_first` reviews (`at_start`), every slot is an audit
drawn from all open items: before any review the signals lean to one kind of text (on
youtube the first ranked reviews were four-fifths spam), and a skewed first sample
misleads the label model's first fit and makes the reviews-only baseline degenerate.

Item ids are prediction ids.

>>> items = rank(task, points, limit=20, seed=0)     # doctest: +SKIP
>>> items[0].reasons                                  # doctest: +SKIP
['low_margin', 'model_disagreement']
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from protege.improver.data.records import DataPoint
from protege.improver.data.reviews import reviewers_disagree
from protege.improver.labeling.functions import ABSTAIN, LabelingFunction, apply_lfs
from protege.improver.labeling.label_model import LabelModelFit
from protege.improver.labeling.sources import default_model_name, task_lfs
from protege.taskspec import TaskSpec

CHEAP = ("rule", "python")  # LF sources that cost nothing to apply
# Added to the uncertainty (0..1): a disagreement between models outranks a low margin,
# which a disagreement usually comes with anyway.
WEIGHTS = {
    "reviewers_disagree": 4.0,  # settling a disputed label beats finishing an item
    "needs_another_review": 3.0,  # finishing an item beats starting one
    "low_margin": 0.5,
    "model_disagreement": 1.0,
    "label_model_disagreement": 1.0,
    "lf_conflict": 0.5,
}


@dataclass(frozen=True)
class QueueItem:
    point: DataPoint
    score: float
    reasons: list[str]

    @property
    def prediction_id(self) -> str:
        return str(self.point.uid)


def is_audit(prediction_id: str, share: float) -> bool:
    """Whether a prediction belongs to the audit subset: a fixed `share` of traffic, by
    hash (uniform, and recomputable from the id alone)."""
    digest = hashlib.sha256(prediction_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def at_start(task: TaskSpec, reviews: Callable[[], int]) -> TaskSpec:
    """`task` as the queue ranks it now: all audit (uniformly random) slots while the
    task has fewer than `review.random_first` reviews (`reviews()` counts them; never
    called when the setting is off, the default)."""
    if not task.review.random_first or reviews() >= task.review.random_first:
        return task
    return task.model_copy(update={"review": task.review.model_copy(update={"audit_share": 1.0})})


def reviewers(x: DataPoint) -> set[str]:
    return {r.reviewer for r in x.reviews}


def wants_review(task: TaskSpec, x: DataPoint) -> bool:
    """Fewer than `review.reviews_needed` reviewers, or reviewers who disagree and room
    for a tie-breaker (`review.second_looks`)."""
    n = len(reviewers(x))
    if n < task.review.reviews_needed:
        return True
    return n < task.review.reviews_needed + task.review.second_looks and reviewers_disagree(
        x, task.label_names
    )


def open_items(task: TaskSpec, points: Sequence[DataPoint], reviewer: str | None) -> list:
    """Points that still need a review, and not one from `reviewer`: not the texts the
    task's owner labeled (imported gold), nor those with enough reviewers."""
    return [
        x
        for x in points
        if not x.extra.get("imported_gold")
        and wants_review(task, x)
        and (reviewer is None or reviewer not in reviewers(x))
    ]


def margin_of(x: DataPoint, n_labels: int) -> float:
    """The served answer's top-two gap; from the top probability alone when only that was
    recorded (exact for two labels); 1 (confident) when nothing was."""
    margin = x.extra.get("margin")
    if margin is not None:
        return float(margin)
    confidence = x.extra.get("confidence")
    if confidence is None:
        return 1.0
    return float(max(0.0, 2 * confidence - 1)) if n_labels == 2 else float(confidence)


def signals(
    task: TaskSpec,
    points: Sequence[DataPoint],
    votes: np.ndarray | None = None,
    label_model_probs: np.ndarray | None = None,
) -> list[tuple[float, list[str], str | None]]:
    """(score, reasons, probable label) per point. `votes` are the cheap LFs' label
    indices ([N, M], -1 abstains); `label_model_probs` the last label model's output
    ([N, C]; NaN rows: no LF voted)."""
    names = task.label_names
    out = []
    for i, x in enumerate(points):
        margin = margin_of(x, len(names))
        reasons = []
        if x.reviews and reviewers_disagree(x, names):
            reasons.append("reviewers_disagree")
        elif x.reviews:
            reasons.append("needs_another_review")
        if margin < task.review.low_margin:
            reasons.append("low_margin")
        if (
            x.specialist_label is not None
            and x.foundation_label is not None
            and x.specialist_label != x.foundation_label
        ):
            reasons.append("model_disagreement")
        if votes is not None and len(set(votes[i][votes[i] != ABSTAIN].tolist())) > 1:
            reasons.append("lf_conflict")
        probable = x.specialist_label or x.served_label
        if label_model_probs is not None:
            row = label_model_probs[i]
            if np.all(np.isfinite(row)) and row.sum() > 0 and not np.allclose(row, row[0]):
                probable = names[int(np.argmax(row))]
                if probable != x.served_label:
                    reasons.append("label_model_disagreement")
        score = (1.0 - margin) + sum(WEIGHTS[r] for r in reasons)
        out.append((score, reasons or ["uncertain"], probable))
    return out


def in_turns(order: list[int], groups: list[str | None]) -> list[int]:
    """`order` (best first) taken in turns across `groups`: the best of each group, then
    the second best of each, ...; groups go in the order of their best item."""
    by_group: dict[str | None, list[int]] = {}
    for i in order:
        by_group.setdefault(groups[i], []).append(i)
    queues = list(by_group.values())
    out: list[int] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        out += [q[depth] for q in queues if depth < len(q)]
    return out


def rank(
    task: TaskSpec,
    points: Sequence[DataPoint],
    *,
    limit: int,
    reviewer: str | None = None,
    votes: Callable[[list[DataPoint]], np.ndarray] | None = None,
    label_model: Callable[[list[DataPoint]], np.ndarray] | None = None,
    seed: int | None = None,
) -> list[QueueItem]:
    """The queue: up to `limit` items, the audit ones first, then by score in turns
    across probable labels (newest first on ties). `points` are the newest predictions,
    newest first; `votes` and `label_model` compute the cheap LFs' votes and the label
    model's probabilities for the points they are given."""
    rng = np.random.default_rng(seed)
    share = task.review.audit_share
    pending = open_items(task, points, reviewer)
    audit_pool = [x for x in pending if is_audit(str(x.uid), share)]
    ranked_pool = [x for x in pending if not is_audit(str(x.uid), share)]

    wanted = limit * share
    n_audit = min(len(audit_pool), int(math.floor(wanted)) + int(rng.random() < wanted % 1))
    # Slots the ranked items cannot fill take more audit items: nothing open is hidden.
    n_audit = max(n_audit, min(len(audit_pool), limit - len(ranked_pool)))
    picked = rng.choice(len(audit_pool), size=n_audit, replace=False) if n_audit else []
    audits = [QueueItem(audit_pool[i], 0.0, ["audit"]) for i in picked]

    scored = signals(
        task,
        ranked_pool,
        votes(ranked_pool) if votes and ranked_pool else None,
        label_model(ranked_pool) if label_model and ranked_pool else None,
    )
    order = sorted(range(len(ranked_pool)), key=lambda i: -scored[i][0])  # stable: newest first
    order = in_turns(order, [probable for _, _, probable in scored])
    ranked = [
        QueueItem(ranked_pool[i], round(scored[i][0], 4), scored[i][1])
        for i in order[: limit - len(audits)]
    ]
    return audits + ranked


def _no_fm():
    raise RuntimeError("the review queue never asks the FM")


def queue_lfs(task: TaskSpec, sources: Sequence[str], cache) -> list[LabelingFunction]:
    """The task's LFs from `sources` as the queue applies them: prompt LFs read their
    cached scores and abstain elsewhere (budget 0), so the FM is never called."""
    return task_lfs(
        task,
        sources,
        backend=_no_fm,
        cache=cache,
        model_name=default_model_name() if "prompt" in sources else None,
        prompt_budget=0,
    )


def cheap_votes(task: TaskSpec) -> Callable[[list[DataPoint]], np.ndarray]:
    """The rules' and Python LFs' votes on points, as label indices."""
    lfs = task_lfs(task, CHEAP)

    def votes(points: list[DataPoint]) -> np.ndarray:
        if not lfs:
            return np.full((len(points), 0), ABSTAIN)
        return apply_lfs(lfs, task.label_names, points).L

    return votes


def label_model_scorer(
    task: TaskSpec, fit: LabelModelFit, sources: Sequence[str], cache
) -> Callable[[list[DataPoint]], np.ndarray]:
    """The last round's label model over the same LFs it was fitted on (NaN where no LF
    votes, so that the queue ignores those rows)."""
    lfs = queue_lfs(task, sources, cache)

    def probabilities(points: list[DataPoint]) -> np.ndarray:
        matrix = apply_lfs(lfs, task.label_names, points)
        probs = np.asarray(fit.model.predict_proba(matrix.L), dtype=float)
        probs[~matrix.covered] = np.nan
        return probs

    return probabilities
