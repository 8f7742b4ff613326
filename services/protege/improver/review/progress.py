"""Reviewers' progress and agreement for a task, from the store: per reviewer, verdicts
today (since midnight UTC) and in all, their thumbs-down rate and their agreement with
the others; for the task, Fleiss' kappa over items with two or more reviewers."""

from __future__ import annotations

import time

from protege.improver.data.records import DataPoint
from protege.improver.data.reviews import reviewer_positions
from protege.improver.data.store import ExampleStore
from protege.improver.review.agreement import kappa, shared_agreement
from protege.schemas import Agreement, ReviewerProgress, ReviewStats
from protege.taskspec import TaskSpec

DAY_S = 86_400


def review_stats(task: TaskSpec, store: ExampleStore, now: float | None = None) -> ReviewStats:
    now = time.time() if now is None else now
    since = now - now % DAY_S
    positions = [
        reviewer_positions(DataPoint("", reviews=tuple(reviews)), task.label_names)
        for reviews in store.reviews_by_text(task.name).values()
    ]
    multi = [p for p in positions if len(p) >= 2]
    observed, k = kappa([list(p.values()) for p in multi])
    shared = shared_agreement(multi)
    reviewers = [
        ReviewerProgress(
            reviewer=row["reviewer"],
            today=row["recent"],
            total=row["total"],
            thumbs_down=row["down"],
            thumbs_down_rate=row["down"] / row["total"] if row["total"] else None,
            shared=shared.get(row["reviewer"], (0, 0))[0],
            agreed=shared.get(row["reviewer"], (0, 0))[1],
        )
        for row in store.reviewer_counts(task.name, since)
    ]
    return ReviewStats(
        task=task.name,
        today_since=since,
        reviewers=reviewers,
        agreement=Agreement(
            items=len(multi),
            observed=observed,
            kappa=k,
            disagreements=sum(1 for p in multi if len(set(p.values())) > 1),
        ),
    )
