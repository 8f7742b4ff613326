"""Routing policy, per task: which model answers each text. Plain functions and one
small async class, so that tests exercise every policy without Ray.

- foundation-only: the FM answers.
- specialist-only: the specialist answers (the FM until a task has one).
- cascade: the specialist answers when its top probability reaches the threshold,
  otherwise the text is escalated to the FM.
- shadow_rate: on that share of specialist answers the FM also runs, off the
  critical path; its answer is recorded, never returned.

A task whose champion is an FM adapter has every FM call (answers, escalations,
shadow runs) go to that adapter, never the base model; `served_by` names it.

Every FM call has a deadline. An escalation the FM cannot answer in time (or at all)
keeps the specialist's answer, marked `degraded`; a text only the FM can answer
raises `FoundationUnavailable` (a 503: try again).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from protege.schemas import AdapterRef, ModelRef, Route
from protege.taskspec import Policy, TaskSpec

log = logging.getLogger(__name__)

ScoreFn = Callable[[TaskSpec, list[str]], Awaitable[np.ndarray]]
# The FM: (task, texts, adapter=name or None for the base model) -> [N, C]; `adapter`
# by keyword, since the clients' third parameter is the prompt LF's name.
FoundationScoreFn = Callable[..., Awaitable[np.ndarray]]


class FoundationUnavailable(RuntimeError):
    """The FM failed or missed its deadline: worth trying again later."""


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
    degraded: bool = False  # the FM should have answered and could not: the specialist did


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

    def __init__(
        self,
        score_foundation: FoundationScoreFn,
        foundation_ref: Callable[[], ModelRef],
        deadline_s: float | None = None,
    ):
        self._score_foundation = score_foundation
        self.foundation_ref = foundation_ref
        self.deadline_s = deadline_s

    def foundation_model(self, adapter: AdapterRef | None) -> ModelRef:
        """Who answers a task's FM calls: its adapter, else the base model."""
        return adapter.ref if adapter is not None else self.foundation_ref()

    async def score_foundation(
        self, task: TaskSpec, texts: list[str], adapter: AdapterRef | None = None
    ) -> np.ndarray:
        """The FM's (or `adapter`'s) answers within the deadline, or FoundationUnavailable."""
        name = adapter.name if adapter is not None else None
        try:
            return await asyncio.wait_for(
                self._score_foundation(task, texts, adapter=name), self.deadline_s
            )
        except TimeoutError:
            raise FoundationUnavailable(
                f"the foundation model did not answer within {self.deadline_s:g} s"
            ) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a remote model: any failure there is "not now"
            raise FoundationUnavailable(
                f"the foundation model failed to answer: {type(exc).__name__}"
            ) from exc

    async def route(
        self,
        task: TaskSpec,
        texts: list[str],
        prediction_ids: list[str],
        specialist: tuple[ModelRef, ScoreFn, float] | None,
        adapter: AdapterRef | None = None,
    ) -> list[RoutedAnswer]:
        """`specialist` is (its model ref, its scoring function, its threshold) or None;
        `adapter`, the task's champion adapter, takes the base model's place."""
        policy = task.routing.policy
        if specialist is None or policy is Policy.foundation_only:
            probs = await self.score_foundation(task, texts, adapter)
            ref = self.foundation_model(adapter)
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
            try:
                fm_probs = await self.score_foundation(task, [texts[i] for i in escalated], adapter)
            except FoundationUnavailable as exc:
                log.warning(
                    "%s: %s; %d specialist answers degraded", task.name, exc, len(escalated)
                )
                for i in escalated:
                    answers[i].degraded = True
            else:
                fm_ref = self.foundation_model(adapter)
                for i, p in zip(escalated, fm_probs):
                    answers[i].route = Route.escalated
                    answers[i].answer = answers[i].foundation = ModelAnswer(fm_ref, p)
        for answer, prediction_id in zip(answers, prediction_ids):
            answer.shadow = (
                answer.route is Route.specialist and not answer.degraded
            ) and in_shadow_sample(prediction_id, task.routing.shadow_rate)
        return answers
