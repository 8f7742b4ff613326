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


def reviewer_labels(x: DataPoint) -> dict[str, str]:
    """reviewer -> the label their latest verdict on the text gives it: their correction,
    or the served label they confirmed (a bare thumbs-down names no label)."""
    found: dict[str, str] = {}
    for r in sorted(x.reviews, key=lambda r: r.timestamp):
        if r.label is not None and r.label != r.predicted:
            found[r.reviewer] = r.label
        elif r.verdict == "up" and r.predicted is not None:
            found[r.reviewer] = r.predicted
        else:
            found.pop(r.reviewer, None)
    return found


def trusted_label(x: DataPoint) -> str | None:
    """The label reviewers with a `trusted` key gave (as `correction`/`confirmed` read
    their verdicts alone)."""
    trusted = DataPoint(x.text, reviews=tuple(r for r in x.reviews if r.trusted))
    if not trusted.reviews:
        return None
    return correction(trusted) or confirmed(trusted)


def agreed_label(x: DataPoint, agreeing: int) -> str | None:
    """The label at least `agreeing` distinct reviewers gave, when more than half of the
    reviewers who named a label named it. Reviewers are API keys: one key's repeated
    verdicts count once."""
    labels = Counter(reviewer_labels(x).values())
    if not labels:
        return None
    label, count = labels.most_common(1)[0]
    if count >= agreeing and 2 * count > sum(labels.values()):
        return label
    return None


def reviewer_positions(x: DataPoint, labels: list[str]) -> dict[str, str]:
    """reviewer -> what their latest verdict on the text says, as something two reviewers
    can agree on: the label they gave or confirmed, or for a bare thumbs-down "not
    <served>" (on a two-label task, the other label). For agreement, not for training."""
    found: dict[str, str] = {}
    for r in sorted(x.reviews, key=lambda r: r.timestamp):
        if r.label is not None and r.label != r.predicted:
            found[r.reviewer] = r.label
        elif r.verdict == "up" and r.predicted is not None:
            found[r.reviewer] = r.predicted
        elif r.verdict == "down" and r.predicted is not None:
            others = [label for label in labels if label != r.predicted]
            found[r.reviewer] = others[0] if len(labels) == 2 else f"not {r.predicted}"
    return found


def reviewers_disagree(x: DataPoint, labels: list[str]) -> bool:
    """Two reviewers of the text took different positions (see `reviewer_positions`)."""
    return len(set(reviewer_positions(x, labels).values())) > 1
