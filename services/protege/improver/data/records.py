"""The records the improver reads out of the example store: a text with what the
event log knows about it (`DataPoint`), a reviewer's verdict (`Review`) and a
trusted label (`GoldExample`). Labeling functions see `DataPoint`s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


def text_hash(text: str) -> str:
    """Identity of a text for dedupe, caching and the held-out split: whitespace-normalized."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Review:
    """One reviewer's latest verdict on one prediction."""

    reviewer: str
    verdict: str  # "up" | "down"
    predicted: str | None  # the label the reviewed prediction served
    label: str | None = None  # the correction, when the reviewer gave one
    timestamp: float = 0.0
    trusted: bool = False  # sent with a key that holds the `trusted` role


@dataclass(frozen=True)
class DataPoint:
    """What a labeling function sees: a text and what the event log knows about it."""

    text: str
    uid: str | None = None
    served_label: str | None = None
    foundation_label: str | None = None
    foundation_confidence: float | None = None
    specialist_label: str | None = None
    specialist_confidence: float | None = None
    reviews: tuple[Review, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class GoldExample:
    text: str
    label: str
    # "file:<name>", "review:trusted", "review:agreement" (trusted);
    # "review:correction", "review:confirmed" (one untrusted reviewer's word)
    source: str
    split: str  # "train", "calibration" or "exam", from the text's hash
    trusted: bool = False  # may grade (exam) or calibrate; untrusted gold only trains


@dataclass(frozen=True)
class Hold:
    """A review console's reservation of an item for one reviewer."""

    prediction_id: str
    reviewer: str
    reserved_at: float
    expires_at: float
    done_at: float | None = None  # the holder sent a verdict then
    answered_at: float | None = None  # the time of the holder's stored verdict on the item

    @property
    def finished(self) -> bool:
        """The holder judged the item since taking it: sent (`done_at`), or stored after
        the hold began (the console's word may have been lost)."""
        return self.done_at is not None or (
            self.answered_at is not None and self.answered_at >= self.reserved_at
        )

    @property
    def releases(self) -> bool:
        """Keeps no one else out any more: finished, and the verdict is stored."""
        return self.done_at is not None and self.answered_at is not None
