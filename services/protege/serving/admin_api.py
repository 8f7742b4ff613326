"""Admin routes: the registry's versions of a task's specialist, promotion,
rollback (an alias move plus a ModelEvent: instant) and retraining on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import APIRouter, Depends, HTTPException
from pydantic import Field

from protege.schemas import Body, Event, ModelEvent, RetrainRequest
from protege.serving.auth import require
from protege.serving.champion_watcher import ChampionWatcher


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
