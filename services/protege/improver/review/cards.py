"""A queue item as a reviewer sees it: the text, the answer with its probabilities, who
answered, and what the labeling sources vote on it. Other reviewers' verdicts are left
out (feedback LFs included): each review stays an independent opinion, which is what
makes two agreeing reviews trusted gold."""

from __future__ import annotations

from collections.abc import Sequence

from protege.improver.data.records import DataPoint
from protege.improver.data.reviews import reviewers_disagree
from protege.improver.labeling.functions import ABSTAIN, LabelingFunction, apply_lfs
from protege.improver.review.queue import queue_lfs, reviewers
from protege.schemas import (
    LabelProbability,
    ModelAnswerSummary,
    ReviewCard,
    ReviewItem,
    SourceVote,
)
from protege.taskspec import TaskSpec

# The sources whose votes a reviewer sees: every one but `feedback` (the other reviewers).
CARD_SOURCES = ("rule", "python", "prompt", "model")


def review_item(x: DataPoint, score: float, reasons: list[str]) -> ReviewItem:
    return ReviewItem(
        prediction_id=str(x.uid),
        text=x.text,
        label=x.served_label or "",
        confidence=x.extra.get("confidence"),
        margin=x.extra.get("margin"),
        route=x.extra.get("route"),
        predicted_at=float(x.extra.get("timestamp") or 0.0),
        reviews=len(reviewers(x)),
        score=score,
        reasons=reasons,
    )


def card_lfs(task: TaskSpec, cache) -> list[LabelingFunction]:
    """The LFs whose votes a card shows (prompt LFs from their cache: no FM call)."""
    return queue_lfs(task, CARD_SOURCES, cache)


def source_votes(task: TaskSpec, x: DataPoint, lfs: Sequence[LabelingFunction]) -> list[SourceVote]:
    if not lfs:
        return []
    matrix = apply_lfs(lfs, task.label_names, [x])
    return [
        SourceVote(
            name=name,
            source=source,
            label=None if vote == ABSTAIN else task.label_names[int(vote)],
        )
        for name, source, vote in zip(matrix.lf_names, matrix.sources, matrix.L[0])
    ]


def _answer(model: str | None, label: str | None, confidence: float | None):
    if label is None:
        return None
    return ModelAnswerSummary(model=model, label=label, confidence=confidence)


def review_card(
    task: TaskSpec,
    x: DataPoint,
    score: float,
    reasons: list[str],
    reserved_until: float,
    lfs: Sequence[LabelingFunction] = (),
) -> ReviewCard:
    served_by = x.extra.get("served_by")
    route = x.extra.get("route")
    return ReviewCard(
        task=task.name,
        item=review_item(x, score, reasons),
        served_by=served_by,
        probabilities=[
            LabelProbability(label=label, probability=p)
            for label, p in x.extra.get("probabilities") or []
        ],
        # The event names only the served model; the other's version is not recorded.
        specialist=_answer(
            served_by if route == "specialist" else None,
            x.specialist_label,
            x.specialist_confidence,
        ),
        foundation=_answer(
            served_by if route in ("foundation", "escalated") else None,
            x.foundation_label,
            x.foundation_confidence,
        ),
        votes=source_votes(task, x, lfs),
        reviewers_disagree=reviewers_disagree(x, task.label_names),
        reserved_until=reserved_until,
    )
