"""The label options a reviewer chooses from, most probable first: the served answer's
recorded top-k with their probabilities, then the task's other labels in the order of
the live specialist's probabilities for the text (the event records only the top-k; on
a task of dozens of labels the likely ones must stay within reach of keys 1-9), or in
the task's order when no specialist serves."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from protege.schemas import ReviewCard
from protege.serving.specialists import SpecialistSlots
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)

SHORTCUT_KEYS = 9  # labels reachable with keys 1-9


@dataclass(frozen=True)
class LabelOption:
    name: str
    description: str
    probability: float | None  # as served; None beyond the recorded top-k
    live_probability: float | None  # the live specialist's, when it scored the text
    served: bool
    key: str | None  # "1".."9" for the first nine


async def live_probabilities(
    task: TaskSpec, slots: SpecialistSlots, text: str
) -> tuple[np.ndarray | None, str | None]:
    """The live specialist's probabilities for `text` and its name ('model:version')."""
    live = slots.get(task.name)
    if live is None:
        return None, None
    try:
        probs = np.asarray((await live.batcher([text]))[0], dtype=float)
    except Exception:  # the options still list every label, in the task's order
        log.exception("the live specialist could not score a review item of %s", task.name)
        return None, None
    return probs, f"{live.model.ref.model}:{live.model.ref.version}"


def label_options(task: TaskSpec, card: ReviewCard, live: np.ndarray | None) -> list[LabelOption]:
    served = {p.label: p.probability for p in card.probabilities}
    first = sorted(served, key=lambda label: -served[label])
    rest = [label.name for label in task.labels if label.name not in served]
    if live is not None:
        index = {name: i for i, name in enumerate(task.label_names)}
        rest.sort(key=lambda name: -live[index[name]])
    descriptions = {label.name: label.description for label in task.labels}
    live_of = (
        {name: float(live[i]) for i, name in enumerate(task.label_names)}
        if live is not None
        else {}
    )
    names = [name for name in first + rest if name in descriptions]  # labels the task has
    return [
        LabelOption(
            name=name,
            description=descriptions[name],
            probability=served.get(name),
            live_probability=live_of.get(name),
            served=name == card.item.label,
            key=str(i + 1) if i < SHORTCUT_KEYS else None,
        )
        for i, name in enumerate(names)
    ]
