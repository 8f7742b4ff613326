"""Routing policy, per task: which model answers each text. Plain functions and one
small async class, so that tests exercise every policy without Ray.

- foundation-only: the FM answers.
- specialist-only: the specialist answers (the FM until a task has one).
- cascade: the specialist answers when its top probability reaches the threshold,
  otherwise the text is escalated to the FM.
- shadow_rate: on that share of specialist answers the FM also runs, off the
  critical path; its answer is recorded, never returned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from protege.schemas import ModelRef, Route
from protege.taskspec import Policy, TaskSpec

ScoreFn = Callable[[TaskSpec, list[str]], Awaitable[np.ndarray]]


@dataclass
class ModelAnswer:
    model: ModelRef
    probabilities: np.ndarray  # [C], in the task's label order


@dataclass
class RoutedAnswer:
    route: Route
    answer: ModelAnswer
    specialist: ModelAnswer | None = None
    foundation: ModelAnswer | None = None
    shadow: bool = False  # the FM should also score this text, in the background


def escalates(policy: Policy, confidence: float, threshold: float) -> bool:
    """Whether a specialist answer with this confidence goes on to the FM."""
    return policy is Policy.cascade and confidence < threshold


def in_shadow_sample(prediction_id: str, rate: float) -> bool:
    """A stable coin flip per prediction id: the same id always lands the same way."""
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(prediction_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


class Router:
    """Routes one batch of texts of one task; the models are async callables."""

    def __init__(self, score_foundation: ScoreFn, foundation_ref: Callable[[], ModelRef]):
        self.score_foundation = score_foundation
        self.foundation_ref = foundation_ref

    async def route(
        self,
        task: TaskSpec,
        texts: list[str],
        prediction_ids: list[str],
        specialist: tuple[ModelRef, ScoreFn, float] | None,
    ) -> list[RoutedAnswer]:
        """`specialist` is (its model ref, its scoring function, its threshold) or None."""
        policy = task.routing.policy
        if specialist is None or policy is Policy.foundation_only:
            probs = await self.score_foundation(task, texts)
            ref = self.foundation_ref()
            return [
                RoutedAnswer(Route.foundation, ModelAnswer(ref, p), foundation=ModelAnswer(ref, p))
                for p in probs
            ]
        ref, score_specialist, threshold = specialist
        probs = await score_specialist(task, texts)
        answers = [
            RoutedAnswer(Route.specialist, ModelAnswer(ref, p), specialist=ModelAnswer(ref, p))
            for p in probs
        ]
        escalated = [i for i, p in enumerate(probs) if escalates(policy, float(p.max()), threshold)]
        if escalated:
            fm_probs = await self.score_foundation(task, [texts[i] for i in escalated])
            fm_ref = self.foundation_ref()
            for i, p in zip(escalated, fm_probs):
                answers[i].route = Route.escalated
                answers[i].answer = answers[i].foundation = ModelAnswer(fm_ref, p)
        for answer, prediction_id in zip(answers, prediction_ids):
            answer.shadow = answer.route is Route.specialist and in_shadow_sample(
                prediction_id, task.routing.shadow_rate
            )
        return answers
