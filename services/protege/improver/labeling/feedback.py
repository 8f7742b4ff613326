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

from protege.improver.data.records import DataPoint
from protege.improver.data.reviews import confirmed, correction, rejected_predictions
from protege.improver.labeling.functions import LabelingFunction, Vote
from protege.taskspec import TaskSpec


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
