"""The review console's desk: items handed out one at a time, from the ranked queue, each
kept from the other reviewers while one judges it.

- `take`: the reviewer's own held item if they have one (after a reload, or an undo),
  else the best queue item that no one else holds, reserved for
  `review.reservation_minutes`. Items they skipped never come back to them.
- `finish`: the console sent the reviewer's verdict. The hold keeps the others out until
  the verdict is in the store (it travels through Kafka): until then the store still
  counts the item as open, and a second reviewer would get it.
- `hold_again`: an undo gives the item back to its reviewer (unless another has it now).
- `skip`: release the item, and never hand it to this reviewer again.

Holds live in the store (`ExampleStore.hold`), so that improver replicas and restarts
agree on them; expired ones hold nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from protege.improver.data.records import DataPoint, Hold
from protege.improver.data.store import ExampleStore
from protege.improver.labeling.functions import LabelingFunction
from protege.improver.review.cards import review_card
from protege.improver.review.queue import at_start, is_audit, open_items, rank, signals
from protege.schemas import Assignment
from protege.taskspec import TaskSpec

# Ranked items tried in turn when other reviewers take the first ones at the same moment.
TRIES = 20

Scorer = Callable[[list[DataPoint]], np.ndarray]


def _scored(
    task: TaskSpec, x: DataPoint, votes: Scorer | None, label_model: Scorer | None
) -> tuple[float, list[str]]:
    """The queue's score and reasons for one item handed out before."""
    if is_audit(str(x.uid), task.review.audit_share):
        return 0.0, ["audit"]
    ((score, reasons, _),) = signals(
        task,
        [x],
        votes([x]) if votes else None,
        label_model([x]) if label_model else None,
    )
    return round(score, 4), reasons


def _blocked(holds: Sequence[Hold], reviewer: str) -> set[str]:
    """Items not to hand to `reviewer`: those another reviewer holds (unless finished and
    stored), and their own finished ones (their verdict may not be stored yet)."""
    return {
        h.prediction_id
        for h in holds
        if (h.reviewer != reviewer and not h.releases) or (h.reviewer == reviewer and h.finished)
    }


def held_elsewhere(
    task: TaskSpec, store: ExampleStore, reviewer: str | None, now: float | None = None
) -> set[str]:
    """Items not to offer `reviewer` (anyone, when None) now: held by another reviewer
    in the console, or finished by them and not stored yet."""
    holds = store.live_holds(task.name, time.time() if now is None else now)
    return (
        _blocked(holds, reviewer)
        if reviewer is not None
        else {h.prediction_id for h in holds if not h.releases}
    )


def take(
    task: TaskSpec,
    store: ExampleStore,
    reviewer: str,
    *,
    votes: Scorer | None = None,
    label_model: Scorer | None = None,
    lfs: Sequence[LabelingFunction] = (),
    now: float | None = None,
) -> Assignment:
    """The item `reviewer` should judge now (see the module docstring); `votes` and
    `label_model` rank as in the queue, `lfs` vote on the card."""
    now = time.time() if now is None else now
    holds = store.live_holds(task.name, now)
    blocked = _blocked(holds, reviewer) | store.skipped(task.name, reviewer)
    points = [x for x in store.recent_points(task.name, task.review.window) if x.uid not in blocked]
    waiting = {str(x.uid) for x in open_items(task, points, reviewer)}

    mine = sorted(
        (h for h in holds if h.reviewer == reviewer and not h.finished),
        key=lambda h: -h.reserved_at,
    )
    for h in mine:
        x = store.point_of(task.name, h.prediction_id)
        if x is None:  # pruned by retention since
            continue
        score, reasons = _scored(task, x, votes, label_model)
        card = review_card(task, x, score, reasons, h.expires_at, lfs)
        return Assignment(
            task=task.name, reviewer=reviewer, card=card, waiting=len(waiting - {h.prediction_id})
        )

    until = now + task.review.reservation_minutes * 60
    for item in rank(
        at_start(task, lambda: store.counts(task.name)["feedback"]),
        points,
        limit=TRIES,
        reviewer=reviewer,
        votes=votes,
        label_model=label_model,
    ):
        if store.hold(task.name, item.prediction_id, reviewer, until, now):
            card = review_card(task, item.point, item.score, item.reasons, until, lfs)
            return Assignment(
                task=task.name,
                reviewer=reviewer,
                card=card,
                waiting=len(waiting - {item.prediction_id}),
            )
    return Assignment(task=task.name, reviewer=reviewer, card=None, waiting=len(waiting))


def hold_again(
    task: TaskSpec,
    store: ExampleStore,
    reviewer: str,
    prediction_id: str,
    *,
    now: float | None = None,
) -> bool:
    """Give an item back to its reviewer (an undo); False when another reviewer holds it
    now, or the store no longer has it."""
    now = time.time() if now is None else now
    if store.point_of(task.name, prediction_id) is None:
        return False
    until = now + task.review.reservation_minutes * 60
    return store.hold(task.name, prediction_id, reviewer, until, now)


def finish(
    task: TaskSpec, store: ExampleStore, reviewer: str, prediction_id: str, now: float | None = None
) -> bool:
    """The reviewer's verdict on the item was sent; False when they held no such item."""
    return store.finish_hold(
        task.name, prediction_id, reviewer, time.time() if now is None else now
    )


def skip(
    task: TaskSpec, store: ExampleStore, reviewer: str, prediction_id: str, now: float | None = None
) -> None:
    store.skip(task.name, prediction_id, reviewer, time.time() if now is None else now)
