"""The gateway's logic, free of HTTP and of Ray: validate per-task limits, assign
signed prediction ids, route, shape answers, emit events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from protege.schemas import (
    AdapterRef,
    Event,
    FeedbackEvent,
    FeedbackRequest,
    LabelProbability,
    ModelOutput,
    ModelRef,
    Prediction,
    PredictionEvent,
    PredictResponse,
    TaskModels,
    TaskSummary,
)
from protege.serving.auth import Identity
from protege.serving.foundation_client import FoundationClient
from protege.serving.metrics import ServingMetrics
from protege.serving.prediction_ids import PredictionIds
from protege.serving.router import FoundationUnavailable, ModelAnswer, RoutedAnswer, Router
from protege.serving.specialists import SpecialistSlots
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)


class InputError(ValueError):
    """A request that is well-formed JSON but breaks a task's limits: a 422."""

    def __init__(self, loc: list, message: str, kind: str = "value_error"):
        super().__init__(message)
        self.loc, self.kind = loc, kind


class UnknownPrediction(LookupError):
    """Feedback on a prediction id this deployment never issued: a 404."""


def top_k(task: TaskSpec, probs: np.ndarray, k: int) -> list[LabelProbability]:
    order = np.argsort(-probs)[:k]
    return [
        LabelProbability(label=task.label_names[i], probability=round(float(probs[i]), 6))
        for i in order
    ]


def model_output(task: TaskSpec, answer: ModelAnswer | None) -> ModelOutput | None:
    if answer is None:
        return None
    probs = answer.probabilities
    return ModelOutput(
        model=answer.model,
        label=task.label_names[int(np.argmax(probs))],
        probabilities=top_k(task, probs, task.limits.top_k),
    )


class GatewayCore:
    def __init__(
        self,
        tasks: dict[str, TaskSpec],
        foundation: FoundationClient,
        specialists: SpecialistSlots,
        ids: PredictionIds,
        metrics: ServingMetrics | None = None,
        publish: Callable[[Event], None] | None = None,
        event_stats: Callable[[], dict] | None = None,
        shadow_max_inflight: int = 2,
        fm_deadline_s: float | None = None,
    ):
        self.tasks = tasks
        self.foundation = foundation
        self.specialists = specialists
        self.ids = ids
        self.metrics = metrics
        self.publish = publish
        self.event_stats = event_stats
        self.shadow_max_inflight = shadow_max_inflight
        self.router = Router(
            foundation.score,
            lambda: foundation.ref or ModelRef(model="foundation", version="?"),
            deadline_s=fm_deadline_s,
        )
        self._background: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ predict
    def check_limits(self, task: TaskSpec, texts: list[str], batch_field: str) -> None:
        limits = task.limits
        if len(texts) > limits.max_batch:
            raise InputError(
                ["body", batch_field],
                f"at most {limits.max_batch} texts per call for task {task.name!r}, got {len(texts)}",
                "too_long",
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                loc = ["body", "text"] if batch_field == "text" else ["body", "texts", i]
                raise InputError(
                    loc,
                    f"text has {len(text)} characters; task {task.name!r} allows {limits.max_text_chars}",
                    "string_too_long",
                )

    async def predict(self, task: TaskSpec, texts: list[str]) -> PredictResponse:
        started = time.perf_counter()
        ids = [self.ids.new(task.name) for _ in texts]
        live = self.specialists.get(task.name)
        specialist = None
        if live is not None:
            threshold = live.model.meta.threshold
            specialist = (
                live.model.ref,
                lambda _task, batch: live.batcher(batch),
                task.routing.threshold if threshold is None else threshold,
            )
        adapter = self.specialists.adapter(task.name)
        try:
            answers = await self.router.route(task, texts, ids, specialist, adapter)
        except FoundationUnavailable:
            if self.metrics:
                self.metrics.error(task.name, "foundation_unavailable")
            raise
        except Exception:
            if self.metrics:
                self.metrics.error(task.name, "model")
            raise
        latency_ms = (time.perf_counter() - started) * 1000
        predictions = [self._prediction(task, pid, a, latency_ms) for pid, a in zip(ids, answers)]
        if self.metrics:
            self.metrics.observe_latency(task.name, latency_ms)
            for p in predictions:
                self.metrics.answered(task.name, p.route.value, p.served_by.model, p.degraded)
        for text, prediction, answer in zip(texts, predictions, answers):
            if answer.shadow and len(self._background) >= self.shadow_max_inflight:
                answer.shadow = False  # the FM is busy: skip the comparison, not the answer
            if answer.shadow:
                self._in_background(self._shadow(task, text, prediction, answer, adapter))
            else:
                self._emit_prediction(task, text, prediction, answer)
        return PredictResponse(task=task.name, predictions=predictions)

    def _prediction(
        self, task: TaskSpec, pid: str, answer: RoutedAnswer, latency_ms: float
    ) -> Prediction:
        probs = answer.answer.probabilities
        best = int(np.argmax(probs))
        return Prediction(
            prediction_id=pid,
            label=task.label_names[best],
            confidence=round(float(probs[best]), 6),
            probabilities=top_k(task, probs, task.limits.top_k),
            served_by=answer.answer.model,
            route=answer.route,
            degraded=answer.degraded,
            latency_ms=round(latency_ms, 3),
        )

    def _emit_prediction(
        self, task: TaskSpec, text: str, prediction: Prediction, answer: RoutedAnswer
    ) -> None:
        if self.publish is None:
            return
        self.publish(
            PredictionEvent(
                prediction_id=prediction.prediction_id,
                task=task.name,
                text=text,
                label=prediction.label,
                probabilities=prediction.probabilities,
                route=prediction.route,
                served_by=prediction.served_by,
                specialist=model_output(task, answer.specialist),
                foundation=model_output(task, answer.foundation),
                shadow=answer.shadow,
                degraded=prediction.degraded,
                latency_ms=prediction.latency_ms,
            )
        )

    async def _shadow(
        self,
        task: TaskSpec,
        text: str,
        prediction: Prediction,
        answer: RoutedAnswer,
        adapter: AdapterRef | None,
    ) -> None:
        """The FM's (or the task's adapter's) opinion on a specialist answer: recorded,
        never returned."""
        try:
            probs = (await self.router.score_foundation(task, [text], adapter))[0]
            answer.foundation = ModelAnswer(self.router.foundation_model(adapter), probs)
            if self.metrics:
                self.metrics.shadow_run(
                    task.name, task.label_names[int(np.argmax(probs))] == prediction.label
                )
        except (
            Exception
        ):  # the answer was already given; a shadow failure only loses the comparison
            log.exception("shadow FM run failed for %s", task.name)
            answer.shadow = False
        self._emit_prediction(task, text, prediction, answer)

    def _in_background(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ feedback
    def feedback(self, request: FeedbackRequest, reviewer: Identity) -> FeedbackEvent:
        """The verdict as an event from `reviewer` (who sent it, not what the body says)."""
        task_name = self.ids.task_of(request.prediction_id)
        if task_name is None or task_name not in self.tasks:
            raise UnknownPrediction(request.prediction_id)
        task = self.tasks[task_name]
        if request.label is not None and request.label not in task.label_names:
            raise InputError(
                ["body", "label"], f"{request.label!r} is not a label of task {task.name!r}"
            )
        event = FeedbackEvent(
            prediction_id=request.prediction_id,
            task=task.name,
            verdict=request.verdict,
            label=request.label,
            reviewer=reviewer.name,
            trusted=reviewer.trusted,
            comment=request.comment,
        )
        if self.publish is not None:
            self.publish(event)
        return event

    # ------------------------------------------------------------------ introspection
    def summary(self, task: TaskSpec) -> TaskSummary:
        live = self.specialists.get(task.name)
        calibrated = live.model.meta.threshold if live else None
        return TaskSummary(
            name=task.name,
            description=task.description,
            labels=[
                {"name": label.name, "description": label.description} for label in task.labels
            ],
            policy=task.routing.policy.value,
            threshold=task.routing.threshold if calibrated is None else calibrated,
            threshold_source="configured" if calibrated is None else "calibrated",
            configured_threshold=task.routing.threshold,
            shadow_rate=task.routing.shadow_rate,
            max_batch=task.limits.max_batch,
            max_text_chars=task.limits.max_text_chars,
            models=TaskModels(
                foundation=self.foundation.ref or ModelRef(model="foundation", version="loading"),
                specialist=live.model.ref if live else None,
                specialist_error=self.specialists.errors.get(task.name),
                adapter=self.specialists.adapter(task.name),
            ),
        )

    async def readiness(self, timeout_s: float = 2.0) -> tuple[bool, dict]:
        try:
            fm = await asyncio.wait_for(self.foundation.ready(), timeout_s)
            fm_detail = {"ready": True, "model": fm.model, "version": fm.version}
        except Exception as exc:  # not loaded yet, or the deployment is down
            fm_detail = {"ready": False, "error": f"{type(exc).__name__}: {exc}"}
        tasks = {}
        for name in self.tasks:
            live = self.specialists.get(name)
            adapter = self.specialists.adapter(name)
            tasks[name] = {
                "foundation": fm_detail["ready"],
                "specialist": live.model.ref.model_dump() if live else None,
                "specialist_error": self.specialists.errors.get(name),
                "adapter": adapter.model_dump() if adapter else None,
            }
        return fm_detail["ready"], {"foundation": fm_detail, "tasks": tasks}
