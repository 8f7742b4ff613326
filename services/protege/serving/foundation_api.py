"""The improver's way to the deployment's foundation model: `POST /v1/foundation/score`
and `GET /v1/foundation` (role `foundation`). The improver runs on a CPU pod and never
loads a model of its own; it asks the one serving uses, by task, prompt LF name and
adapter name, so that prompt LFs and the exam's FM baseline score with the served model."""

from __future__ import annotations

import asyncio
import math

from fastapi import APIRouter, Depends, HTTPException

from protege.foundation.remote import scoring_digest
from protege.schemas import FoundationScoreRequest, FoundationScoreResponse, ModelRef
from protege.serving.auth import require
from protege.serving.foundation_client import UnknownAdapter, UnknownPrompt, prompt_spec
from protege.serving.gateway import GatewayCore
from protege.serving.router import FoundationUnavailable


async def within(deadline_s: float, call):
    """`call`'s result within the deadline; FoundationUnavailable (a 503) when the FM
    is late or fails. An unknown prompt or adapter stays the caller's 404."""
    try:
        return await asyncio.wait_for(call, deadline_s)
    except TimeoutError:
        raise FoundationUnavailable(
            f"the foundation model did not answer within {deadline_s:g} s"
        ) from None
    except (asyncio.CancelledError, UnknownPrompt, UnknownAdapter):
        raise
    except Exception as exc:  # a remote deployment: any failure there is "not now"
        raise FoundationUnavailable(
            f"the foundation model failed to answer: {type(exc).__name__}"
        ) from exc


def build_foundation_router(core: GatewayCore, deadline_s: float, route_class, errors) -> APIRouter:
    """The routes, over `core`'s tasks and FoundationClient; `errors` gives their
    documented error codes (see serving/api.py)."""
    router = APIRouter(route_class=route_class, tags=["foundation"])
    foundation = core.foundation

    @router.get(
        "/v1/foundation",
        response_model=ModelRef,
        responses=errors(503),
        dependencies=[Depends(require("foundation"))],
    )
    async def foundation_model() -> ModelRef:
        """The foundation model this deployment serves."""
        return await within(deadline_s, foundation.ready())

    @router.post(
        "/v1/foundation/score",
        response_model=FoundationScoreResponse,
        responses=errors(404, 503),
        dependencies=[Depends(require("foundation"))],
    )
    async def foundation_score(body: FoundationScoreRequest) -> FoundationScoreResponse:
        """The FM's probabilities for `texts` (in the task's label order) under the
        task's prompt or the prompt LF `prompt`, by the base model or `adapter`."""
        task = core.tasks.get(body.task)
        if task is None:
            raise HTTPException(404, f"unknown task {body.task!r}; known: {sorted(core.tasks)}")
        try:
            prompt = prompt_spec(task, body.prompt)
        except UnknownPrompt as exc:
            raise HTTPException(404, str(exc)) from None
        core.check_limits(task, body.texts, "texts")
        try:
            if body.texts:
                probs = await within(
                    deadline_s, foundation.score(task, body.texts, body.prompt, body.adapter)
                )
            else:
                probs = []
            ref = foundation.ref or await within(deadline_s, foundation.ready())
        except (UnknownPrompt, UnknownAdapter) as exc:
            # Through Ray the message ends a traceback: its last line names the error.
            raise HTTPException(404, str(exc).strip().splitlines()[-1]) from None
        rows = [[float(p) for p in row] for row in probs]
        if any(not all(map(math.isfinite, row)) for row in rows):
            raise FoundationUnavailable("the foundation model answered non-finite probabilities")
        return FoundationScoreResponse(
            task=task.name,
            labels=task.label_names,
            probabilities=rows,
            model=ref,
            digest=scoring_digest(task, prompt),
        )

    return router
