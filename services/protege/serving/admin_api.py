"""Admin routes: the registry's versions of a task's specialist, promotion,
rollback (an alias move plus a ModelEvent: instant) and retraining on demand; the
improver's training jobs on Ray (list, logs, stop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse
from pydantic import Field

from protege.jobs import (
    JOB_ID_PATTERN,
    JobsUnavailable,
    UnknownJob,
    job_logs,
    list_jobs,
    stop_job,
)
from protege.schemas import Body, Event, ModelEvent, RetrainRequest
from protege.serving.auth import require
from protege.serving.champion_watcher import ChampionWatcher
from protege.settings import Settings

JOB_ID = PathParam(pattern=JOB_ID_PATTERN, description="A training job's id.")


class VersionChoice(Body):
    version: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,12}$",
        description="Default: the challenger (promote) or the previous champion (rollback).",
    )
    reason: str | None = Field(default=None, max_length=500)


async def move_champion(
    watcher: ChampionWatcher,
    publish: Callable[[Event], None] | None,
    task: str,
    action: str,
    version: str | None,
    reason: str | None,
) -> ModelEvent:
    """Promote or roll back (`action`) in the registry, publish the ModelEvent, and swap
    this replica's specialist now (the event tells the others); a 409 when the registry
    cannot do it. The admin API and the console's buttons both move the champion here."""
    from protege.registry import RegistryError

    registry = await asyncio.to_thread(lambda: watcher.registry)
    operation = registry.promote if action == "promote" else registry.rollback
    reasons = [reason] if reason else None
    try:
        event = await asyncio.to_thread(operation, task, version, reasons=reasons, publish=publish)
    except RegistryError as exc:
        raise HTTPException(409, str(exc)) from None
    await asyncio.to_thread(watcher.check, task)
    return event


def build_admin_router(
    tasks: set[str],
    watcher: ChampionWatcher,
    publish: Callable[[Event], None] | None,
    route_class,
    errors: Callable[..., dict],
) -> APIRouter:
    """`errors(*codes)` documents the error answers of each route."""
    router = APIRouter(
        prefix="/v1/admin/tasks/{task}",
        tags=["admin"],
        route_class=route_class,
        dependencies=[Depends(require("admin"))],
    )

    def known(task: str) -> str:
        if task not in tasks:
            raise HTTPException(404, f"unknown task {task!r}; known: {sorted(tasks)}")
        return task

    async def move(task: str, action: str, choice: VersionChoice) -> ModelEvent:
        return await move_champion(watcher, publish, task, action, choice.version, choice.reason)

    @router.get("/models", responses=errors(404))
    async def list_models(task: str = Depends(known)) -> list[dict]:
        """Every registered version, newest first, with its aliases and metrics."""
        registry = await asyncio.to_thread(lambda: watcher.registry)
        return [info.__dict__ for info in await asyncio.to_thread(registry.list, task)]

    @router.post("/promote", response_model=ModelEvent, responses=errors(404, 409))
    async def promote(choice: VersionChoice, task: str = Depends(known)) -> ModelEvent:
        return await move(task, "promote", choice)

    @router.post("/rollback", response_model=ModelEvent, responses=errors(404, 409))
    async def rollback(choice: VersionChoice, task: str = Depends(known)) -> ModelEvent:
        return await move(task, "rollback", choice)

    @router.post(
        "/retrain", status_code=202, response_model=RetrainRequest, responses=errors(404, 503)
    )
    async def retrain(task: str = Depends(known)) -> RetrainRequest:
        """Ask the improver for a new candidate now (it trains one task at a time)."""
        if publish is None:
            raise HTTPException(503, "no event log configured: the improver cannot be reached")
        request = RetrainRequest(task=task)
        publish(request)
        return request

    return router


def json_errors(responses: dict) -> dict:
    """`errors(...)` for a route whose success body is not JSON: FastAPI would document
    its errors in the route's media type, but they are JSON (`ErrorBody`) as everywhere."""
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {
        code: {"description": r["description"], "content": {"application/json": {"schema": schema}}}
        for code, r in responses.items()
    }


def build_jobs_router(settings: Settings, route_class, errors: Callable[..., dict]) -> APIRouter:
    """The improver's training jobs on Ray's Jobs API (`protege.jobs`): list, logs, stop.
    404 for an id that is no Protégé training job; 503 when the job server is away."""
    router = APIRouter(
        prefix="/v1/admin/jobs",
        tags=["admin"],
        route_class=route_class,
        dependencies=[Depends(require("admin"))],
    )

    async def call(operation, *args):
        try:
            return await asyncio.to_thread(operation, settings, *args)
        except UnknownJob as exc:
            raise HTTPException(404, str(exc)) from None
        except JobsUnavailable as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "30"}) from None

    @router.get("", responses=errors(503))
    async def training_jobs(
        task: str | None = Query(None, max_length=200, description="Only this task's jobs."),
    ) -> list[dict]:
        """Running and finished training jobs, newest first, with their task and round."""
        return [j.to_dict() for j in await call(list_jobs, task)]

    @router.get(
        "/{job_id}/logs", response_class=PlainTextResponse, responses=json_errors(errors(404, 503))
    )
    async def training_job_logs(job_id: str = JOB_ID) -> str:
        """The job's log: its stdout and stderr."""
        return await call(job_logs, job_id)

    @router.post("/{job_id}/stop", status_code=202, responses=errors(404, 503))
    async def stop_training_job(job_id: str = JOB_ID) -> dict:
        """Ask Ray to stop the job; the round waiting for it fails, the champion stays."""
        return (await call(stop_job, job_id)).to_dict()

    return router
