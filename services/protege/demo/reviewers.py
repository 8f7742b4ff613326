"""Simulated reviewers: people who check predictions against what they know (the data
set's gold label) and are sometimes wrong themselves. In the demo they take their
items from the review queue (`protege.demo.traffic`), in turns; `review` also draws a
random share of predictions, for callers without a queue.

A reviewer agrees (thumbs-up) when the served label is what they believe, and
otherwise sends a thumbs-down with the label they believe, as a real reviewer's
correction would. With probability `error_rate` they believe a wrong label.

>>> pool = ReviewerPool(["HAM", "SPAM"], share=1.0, error_rate=0.0, seed=0)
>>> pool.review("HAM", gold="SPAM")
Review(reviewer='ana', verdict='down', label='SPAM')
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_NAMES = ("ana", "ben", "chen", "dara")


@dataclass(frozen=True)
class Review:
    reviewer: str
    verdict: str  # "up" | "down"
    label: str | None  # the reviewer's label on a thumbs-down

    def body(self, prediction_id: str) -> dict:
        """The `POST /v1/feedback` body."""
        body = {"prediction_id": prediction_id, "verdict": self.verdict, "reviewer": self.reviewer}
        if self.label is not None:
            body["label"] = self.label
        return body


class ReviewerPool:
    """Reviewers who see a random `share` of the predictions, taking turns.

    Parameters
    ----------
    labels: the task's labels (a mistaken reviewer believes one of the others).
    share: the fraction of predictions that get a review, in [0, 1].
    error_rate: the fraction of reviews whose belief is a wrong label, in [0, 1].
    seed: the same seed gives the same reviews for the same predictions.
    names: the reviewers' names, in turn.
    """

    def __init__(
        self,
        labels: Sequence[str],
        share: float,
        error_rate: float,
        seed: int = 0,
        names: Sequence[str] = DEFAULT_NAMES,
    ) -> None:
        if not 0.0 <= share <= 1.0 or not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"share {share} and error_rate {error_rate} must be in [0, 1]")
        if len(labels) < 2 or not names:
            raise ValueError("need at least two labels and one reviewer")
        self.labels = list(labels)
        self.share = share
        self.error_rate = error_rate
        self.names = list(names)
        self._rng = random.Random(seed)
        self._turn = 0
        self.reviews = 0
        self.mistakes = 0

    def belief(self, gold: str) -> str:
        """What the reviewer thinks the label is: gold, or another label at `error_rate`."""
        if self._rng.random() < self.error_rate:
            self.mistakes += 1
            return self._rng.choice([label for label in self.labels if label != gold])
        return gold

    def next_reviewer(self) -> str:
        """Whose turn it is."""
        name = self.names[self._turn % len(self.names)]
        self._turn += 1
        return name

    def judge(self, reviewer: str, predicted: str, gold: str) -> Review:
        """`reviewer`'s verdict on a prediction that served `predicted`."""
        believed = self.belief(gold)
        self.reviews += 1
        if believed == predicted:
            return Review(reviewer, "up", None)
        return Review(reviewer, "down", believed)

    def review(self, predicted: str, gold: str) -> Review | None:
        """A review of one prediction by the next reviewer, or None when nobody looks at
        it (a random `share` is looked at)."""
        if self._rng.random() >= self.share:
            return None
        return self.judge(self.next_reviewer(), predicted, gold)
