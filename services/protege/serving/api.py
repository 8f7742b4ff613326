"""The HTTP contract: typed FastAPI routes over the gateway core. The OpenAPI
document at /docs is the API reference."""

from __future__ import annotations

import logging
import math
import uuid

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from protege import __version__
from protege.schemas import (
    ErrorBody,
    FeedbackRequest,
    FeedbackResponse,
    PredictRequest,
    PredictResponse,
    ReviewQueue,
    TaskSummary,
)
from protege.serving.admin_api import build_admin_router, build_jobs_router
from protege.serving.auth import ApiKeys, Identity, require
from protege.serving.champion_watcher import ChampionWatcher
from protege.serving.console import Console, install_console, is_console
from protege.serving.foundation_api import build_foundation_router
from protege.serving.gateway import GatewayCore, InputError, UnknownPrediction
from protege.serving.improver_client import ImproverClient, ImproverUnavailable
from protege.serving.limits import BodyLimit, CallerLimits
from protege.serving.router import FoundationUnavailable
from protege.settings import Settings
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)

ERROR_MEANINGS = {
    400: "The request body is not UTF-8.",
    401: "No API key, or an unknown one.",
    403: "The key lacks the route's role, or names another reviewer.",
    404: "Unknown task or prediction id.",
    409: "The registry cannot do that (no such version, nothing to roll back to).",
    413: "The request body is over PROTEGE_MAX_BODY_BYTES.",
    429: "Over the key's request rate or the reviewer's verdict quota; see Retry-After.",
    503: "Try again (see Retry-After): the foundation model or the improver is unavailable, "
    "or the service is overloaded.",
}


def errors(*codes: int) -> dict:
    """OpenAPI `responses` for the error codes a route may answer (400, 401, 403, 413
    and 429 come with every route behind a key)."""
    return {
        code: {"model": ErrorBody, "description": ERROR_MEANINGS[code]}
        for code in sorted({400, 401, 403, 413, 429, *codes})
    }


# Retry-After when no improver URL is configured: only an operator can fix that.
UNCONFIGURED_RETRY_AFTER_S = 60


class Utf8Route(APIRoute):
    """Answers a body that is not UTF-8 with a 400 before JSON parsing sees it."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def checked(request: Request):
            body = await request.body()  # cached on the request; the handler reads it again
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as exc:
                return JSONResponse(
                    {"detail": f"request body is not valid UTF-8 (byte {exc.start})"}, 400
                )
            return await handler(request)

        return checked


def reviewer_of(identity: Identity, claimed: str | None, auth_disabled: bool) -> Identity:
    """Who a verdict is from: the key's identity. A `reviewer` in the body must match it;
    only with auth disabled (local demos) does the body name the reviewer (never trusted)."""
    if auth_disabled:
        return Identity(claimed, identity.roles - {"trusted"}) if claimed else identity
    if claimed is not None and claimed != identity.name:
        raise HTTPException(
            403, f"reviewer {claimed!r} is not this API key's identity {identity.name!r}"
        )
    return identity


def build_api(
    core: GatewayCore,
    api_keys: ApiKeys,
    watcher: ChampionWatcher | None = None,
    settings: Settings | None = None,
    improver: ImproverClient | None = None,
) -> FastAPI:
    """The app; `settings` gives the limits (body size, rates, quotas, Retry-After).
    With auth disabled there are no identities to limit: no rates or quotas."""
    settings = settings or Settings()
    app = FastAPI(
        title="Protégé",
        version=__version__,
        description="Classify text with a specialist that a foundation model teaches; send feedback.",
    )
    app.state.api_keys = api_keys
    limits = None if api_keys.disabled else CallerLimits.from_settings(settings)
    app.state.limits = limits
    retry_after = str(max(1, math.ceil(settings.retry_after_s)))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    router = APIRouter(route_class=Utf8Route)

    async def task_of(
        task: str = Path(description="A configured task's name.", examples=sorted(core.tasks)),
    ) -> TaskSpec:
        spec = core.tasks.get(task)
        if spec is None:
            raise HTTPException(404, f"unknown task {task!r}; known: {sorted(core.tasks)}")
        return spec

    @router.post(
        "/v1/tasks/{task}/predict",
        response_model=PredictResponse,
        responses=errors(404, 503),
        dependencies=[Depends(require("predict"))],
        tags=["predict"],
    )
    async def predict(body: PredictRequest, spec: TaskSpec = Depends(task_of)) -> PredictResponse:
        """Classify one `text` or a batch of `texts`. When the FM cannot answer an
        escalation in time, the specialist's answer comes back with `degraded: true`."""
        core.check_limits(spec, body.items, "text" if body.text is not None else "texts")
        return await core.predict(spec, body.items)

    @router.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        responses=errors(404),
        tags=["feedback"],
    )
    async def feedback(
        body: FeedbackRequest, identity: Identity = Depends(require("feedback"))
    ) -> FeedbackResponse:
        """Thumbs up or down on a prediction, with an optional corrected label. The
        reviewer is the API key's name; a `reviewer` in the body must equal it. Each
        reviewer has an hourly verdict quota (429 past it)."""
        reviewer = reviewer_of(identity, body.reviewer, api_keys.disabled)
        if limits is not None:
            limits.admit_verdict(reviewer)
        try:
            event = core.feedback(body, reviewer)
        except UnknownPrediction:
            raise HTTPException(404, "unknown prediction_id") from None
        return FeedbackResponse(
            accepted=True,
            prediction_id=event.prediction_id,
            task=event.task,
            event_id=event.event_id,
        )

    @router.get(
        "/v1/tasks/{task}/review-queue",
        response_model=ReviewQueue,
        responses=errors(404, 503),
        tags=["feedback"],
    )
    async def review_queue(
        spec: TaskSpec = Depends(task_of),
        limit: int = Query(20, ge=1, le=100, description="Most items to return."),
        reviewer: str | None = Query(
            None,
            max_length=200,
            description="Optional: must equal the API key's name, as in feedback.",
        ),
        identity: Identity = Depends(require("feedback")),
    ) -> ReviewQueue:
        """Predictions ranked for review (low margin, disagreements, a random audit share),
        each with the reasons it is there; the caller's own reviewed items are left out."""
        who = reviewer_of(identity, reviewer, api_keys.disabled)
        if improver is None:
            raise HTTPException(
                503,
                "the review queue is served by the improver; PROTEGE_IMPROVER_URL is unset",
                headers={"Retry-After": str(UNCONFIGURED_RETRY_AFTER_S)},
            )
        try:
            return await improver.review_queue(spec.name, limit, who.name)
        except ImproverUnavailable as exc:
            raise HTTPException(
                503, str(exc), headers={"Retry-After": str(math.ceil(improver.timeout_s))}
            ) from None

    @router.get(
        "/v1/tasks",
        response_model=list[TaskSummary],
        responses=errors(),
        tags=["tasks"],
        dependencies=[Depends(require("predict"))],
    )
    async def list_tasks() -> list[TaskSummary]:
        return [core.summary(spec) for spec in core.tasks.values()]

    @router.get(
        "/v1/tasks/{task}",
        response_model=TaskSummary,
        responses=errors(404),
        tags=["tasks"],
        dependencies=[Depends(require("predict"))],
    )
    async def get_task(spec: TaskSpec = Depends(task_of)) -> TaskSummary:
        return core.summary(spec)

    @router.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/readyz", tags=["health"], responses={503: {"description": "Not ready yet."}})
    async def readyz() -> JSONResponse:
        ready, detail = await core.readiness()
        return JSONResponse({"ready": ready, **detail}, status_code=200 if ready else 503)

    @router.get(
        "/v1/admin/event-log",
        tags=["admin"],
        responses=errors(404),
        dependencies=[Depends(require("admin"))],
    )
    async def event_log() -> dict:
        """This replica's event producer: produced, spooled, replayed, dropped, backlog."""
        if core.event_stats is None:
            raise HTTPException(404, "event logging is off (PROTEGE_KAFKA_BOOTSTRAP unset)")
        return core.event_stats()

    app.include_router(router)
    app.include_router(
        build_foundation_router(core, settings.fm_score_deadline_s, Utf8Route, errors)
    )
    if watcher is not None:
        app.include_router(
            build_admin_router(set(core.tasks), watcher, core.publish, Utf8Route, errors)
        )
    app.include_router(build_jobs_router(settings, Utf8Route, errors))
    console = Console(core, api_keys, settings, improver, watcher, limits)
    install_console(app, console)

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        # Same shape as FastAPI's own 422s, so clients parse one format.
        return JSONResponse({"detail": [{"loc": exc.loc, "msg": str(exc), "type": exc.kind}]}, 422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        if is_console(request):
            return console.error_page(request, HTTPException(422, str(errors)))
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(FoundationUnavailable)
    async def try_again(request: Request, exc: FoundationUnavailable) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": retry_after})

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        # Ray Serve's proxy gives each request an x-request-id (and returns it); its
        # logs carry it too. Without Serve, make one.
        request_id = request.headers.get("x-request-id")
        headers = {} if request_id else {"X-Request-ID": (request_id := uuid.uuid4().hex)}
        log.exception("request %s: %s %s failed", request_id, request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); request id {request_id}"},
            500,
            headers=headers,
        )

    return app
