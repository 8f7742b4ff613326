"""Reviewer feedback as labeling functions.

- ``reviewer_correction`` votes the label reviewers gave (the most common one; the
  latest breaks a tie).
- ``reviewer_confirmed`` votes the served label when more reviewers said thumbs-up
  than thumbs-down.
- ``reviewer_rejected`` (two-label tasks only) votes the other label when thumbs-down
  outnumber thumbs-up and nobody gave a correction.

With more than two labels a bare thumbs-down names no label to vote for: it is
evidence *against* the served label, which a label matrix cannot hold. It is kept
as :func:`rejected_labels` and applied to the label model's output instead
(:func:`protege.improver.label_model.exclude_labels`).
"""

from __future__ import annotations

from collections import Counter

from protege.config import TaskSpec
from protege.improver.labeling import DataPoint, LabelingFunction, Review, Vote


def _counts(reviews: tuple[Review, ...]) -> tuple[int, int]:
    up = sum(1 for r in reviews if r.verdict == "up" and r.label in (None, r.predicted))
    down = sum(1 for r in reviews if r.verdict == "down" or r.label not in (None, r.predicted))
    return up, down


def correction(x: DataPoint) -> Vote:
    labels = [r for r in x.reviews if r.label is not None and r.label != r.predicted]
    if not labels:
        return None
    counts = Counter(r.label for r in labels)
    best = max(counts.values())
    latest = max((r for r in labels if counts[r.label] == best), key=lambda r: r.timestamp)
    return latest.label


def confirmed(x: DataPoint) -> Vote:
    ups = [r for r in x.reviews if r.verdict == "up" and r.label in (None, r.predicted)]
    up, down = _counts(x.reviews)
    if not ups or up <= down:
        return None
    return max(ups, key=lambda r: r.timestamp).predicted


def rejected_predictions(x: DataPoint) -> set[str]:
    """Labels that reviewers said were wrong for this text (thumbs-down without a fix,
    or the served label of a corrected prediction)."""
    up, down = _counts(x.reviews)
    if down <= up:
        return set()
    return {r.predicted for r in x.reviews if r.verdict == "down" and r.predicted is not None}


def feedback_lfs(task: TaskSpec) -> list[LabelingFunction]:
    lfs = [
        LabelingFunction(
            "reviewer_correction",
            correction,
            task=task.name,
            source="feedback",
            description="The label reviewers gave.",
        ),
        LabelingFunction(
            "reviewer_confirmed",
            confirmed,
            task=task.name,
            source="feedback",
            description="The served label, confirmed by thumbs-up.",
        ),
    ]
    if len(task.labels) == 2:
        labels = task.label_names

        def rejected(x: DataPoint) -> Vote:
            if correction(x) is not None:
                return None
            wrong = rejected_predictions(x)
            return (
                next((lab for lab in labels if lab not in wrong), None) if len(wrong) == 1 else None
            )

        lfs.append(
            LabelingFunction(
                "reviewer_rejected",
                rejected,
                task=task.name,
                source="feedback",
                description="The other label, when the served one got thumbs-down.",
            )
        )
    return lfs


def rejected_labels(task: TaskSpec, points: list[DataPoint]) -> list[set[int]]:
    """Per point, the label indices reviewers ruled out (used on multi-label tasks)."""
    index = {name: i for i, name in enumerate(task.label_names)}
    return [{index[lab] for lab in rejected_predictions(x) if lab in index} for x in points]
