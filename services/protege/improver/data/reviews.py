"""What reviewers' verdicts on a text add up to: the label they gave, the served
label they confirmed, the labels they ruled out. Gold data and the feedback
labeling functions both read reviews through these.

A review whose correction differs from the served label counts as a thumbs-down.
"""

from __future__ import annotations

from collections import Counter

from protege.improver.data.records import DataPoint, Review


def _counts(reviews: tuple[Review, ...]) -> tuple[int, int]:
    up = sum(1 for r in reviews if r.verdict == "up" and r.label in (None, r.predicted))
    down = sum(1 for r in reviews if r.verdict == "down" or r.label not in (None, r.predicted))
    return up, down


def correction(x: DataPoint) -> str | None:
    """The label reviewers gave: the most common correction, the latest on a tie."""
    labels = [r for r in x.reviews if r.label is not None and r.label != r.predicted]
    if not labels:
        return None
    counts = Counter(r.label for r in labels)
    best = max(counts.values())
    latest = max((r for r in labels if counts[r.label] == best), key=lambda r: r.timestamp)
    return latest.label


def confirmed(x: DataPoint) -> str | None:
    """The served label, when more reviewers said thumbs-up than thumbs-down."""
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
