"""How far reviewers agree: Fleiss' kappa over the items two or more of them judged (in
its form for a number of raters that varies by item), the raw share of agreeing pairs,
and each reviewer's agreement with the others on the items they shared.

A reviewer's rating of an item is their position (`data.reviews.reviewer_positions`):
the label they gave or confirmed, or "not <served>" for a bare thumbs-down.

>>> kappa([["SPAM", "SPAM"], ["HAM", "HAM"], ["SPAM", "HAM"]])
(0.6666666666666666, 0.33333333333333326)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence


def kappa(items: Sequence[Sequence[str]]) -> tuple[float | None, float | None]:
    """(observed agreement, Fleiss' kappa) of `items`, each the ratings of one item by
    two or more raters; (None, None) without such items. Kappa is None when chance
    agreement is total (every rating in one category): nothing to correct for."""
    rated = [list(r) for r in items if len(r) >= 2]
    if not rated:
        return None, None
    per_item, totals, n_ratings = [], Counter(), 0
    for ratings in rated:
        n, counts = len(ratings), Counter(ratings)
        per_item.append((sum(c * c for c in counts.values()) - n) / (n * (n - 1)))
        totals.update(counts)
        n_ratings += n
    observed = sum(per_item) / len(per_item)
    chance = sum((count / n_ratings) ** 2 for count in totals.values())
    if chance >= 1.0:
        return observed, None
    return observed, (observed - chance) / (1.0 - chance)


def shared_agreement(items: Sequence[Mapping[str, str]]) -> dict[str, tuple[int, int]]:
    """reviewer -> (items they shared with another reviewer, items where every other
    reviewer took their position); `items` map reviewer -> position."""
    found: dict[str, list[int]] = {}
    for positions in items:
        if len(positions) < 2:
            continue
        for reviewer, position in positions.items():
            tally = found.setdefault(reviewer, [0, 0])
            tally[0] += 1
            tally[1] += all(p == position for r, p in positions.items() if r != reviewer)
    return {reviewer: (shared, agreed) for reviewer, (shared, agreed) in found.items()}
