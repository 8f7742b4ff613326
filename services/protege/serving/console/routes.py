"""The console's pages and forms, under /review (HTML; not in the OpenAPI document).

| route | role | what |
|---|---|---|
| `GET /review/login`, `POST /review/login` | - | sign in with an API key |
| `POST /review/logout` | feedback | sign out |
| `GET /review` | feedback | the tasks, with the reviewer's progress |
| `GET /review/tasks/{task}` | feedback | the next item, reserved for the reviewer |
| `POST /review/tasks/{task}/verdict`, `/skip`, `/undo` | feedback | judge, skip, take back |
| `GET /review/tasks/{task}/progress` | feedback | every reviewer's progress, agreement |
| `GET /review/tasks/{task}/model` | feedback | the owner's page: models, chart, LFs, errors |
| `POST /review/tasks/{task}/model/promote`, `/rollback` | admin | move the champion |

A request is from the signed-in reviewer (the session cookie), or from the key in an
`Authorization: Bearer` header (scripts; no cookie, so no CSRF token to check). Every
verdict takes the path of `POST /v1/feedback`: `GatewayCore.feedback`, a FeedbackEvent
on Kafka from the key's identity.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path as FilePath
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader
from pydantic import ValidationError
from starlette.datastructures import FormData

from protege.schemas import FeedbackRequest, Verdict
from protege.serving.admin_api import move_champion
from protege.serving.auth import ANONYMOUS, ApiKeys, Identity, key_digest, presented_key
from protege.serving.champion_watcher import ChampionWatcher
from protege.serving.console.chart import Decision, timeline_svg
from protege.serving.console.labels import label_options, live_probabilities
from protege.serving.console.session import (
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    SIGN_IN_S,
    Session,
    Sessions,
    same,
)
from protege.serving.gateway import GatewayCore, InputError, UnknownPrediction
from protege.serving.improver_client import ImproverClient, ImproverUnavailable
from protege.serving.limits import CallerLimits
from protege.serving.prediction_ids import signing_secret
from protege.settings import Settings
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)

TEMPLATES = FilePath(__file__).parent / "templates"
PREFIX = "/review"
CHART_BUCKETS = 24  # points on the owner's chart
ERRORS_SHOWN = 5  # error cases per label on the owner's page
MAX_COMMENT = 2000
VERSION = re.compile(r"^[0-9]{1,12}$")
# Messages after a redirect, by a fixed key in the query (never text from the query).
NOTES = {
    "sent": "Verdict sent.",
    "skipped": "Skipped: it will not come back to you.",
    "undone": "Your last verdict is withdrawn; the item is yours again.",
    "undone-taken": "Your last verdict is withdrawn; another reviewer has the item now.",
    "nothing": "Nothing to undo in this session.",
    "promoted": "Promoted.",
    "rolled_back": "Rolled back.",
}


class NotSignedIn(HTTPException):
    def __init__(self, detail: str = "sign in with your API key"):
        super().__init__(401, detail)


@dataclass(frozen=True)
class Reviewer:
    identity: Identity
    session: Session | None  # None: a Bearer key (no cookie: no CSRF token to check)

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def csrf(self) -> str:
        return self.session.csrf if self.session else ""


# Scripts and styles from the console's own files only (texts come from the public: a
# script in one must never run), and no framing (single-key shortcuts invite clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters["utc"] = lambda t: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))
    return env


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: a console path only (no open redirect)."""
    if target and target.startswith(f"{PREFIX}") and "//" not in target and "\\" not in target:
        return target
    return PREFIX


def _field(form: FormData, name: str, required: bool = True, max_length: int = 200) -> str | None:
    value = form.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise HTTPException(422, f"the form lacks {name!r}")
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise HTTPException(422, f"{name!r} must be text of at most {max_length} characters")
    return value.strip()


class Console:
    """The console over one gateway: its core (feedback), keys, limits, the improver's
    API and the registry (through the champion watcher)."""

    def __init__(
        self,
        core: GatewayCore,
        keys: ApiKeys,
        settings: Settings,
        improver: ImproverClient | None,
        watcher: ChampionWatcher | None,
        limits: CallerLimits | None,
    ):
        self.core, self.keys, self.settings = core, keys, settings
        self.improver, self.watcher, self.limits = improver, watcher, limits
        self.sessions = Sessions(
            signing_secret(settings), settings.console_session_s, settings.console_secure_cookie
        )
        self.env = templates()

    # ------------------------------------------------------------------ rendering

    def page(
        self, request: Request, template: str, status: int = 200, headers=None, **context
    ) -> HTMLResponse:
        html = self.env.get_template(template).render(
            prefix=PREFIX, tasks=sorted(self.core.tasks), now=time.time(), **context
        )
        return HTMLResponse(
            html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})}
        )

    def sign_in_page(
        self, request: Request, status: int = 200, message: str | None = None
    ) -> HTMLResponse:
        token, cookie = self.sessions.sign_in_token()
        # Back to the page asked for after signing in (the sign-in page's own `next`).
        target = request.query_params.get("next")
        if request.method == "GET" and request.url.path != f"{PREFIX}/login":
            target = request.url.path
        response = self.page(
            request,
            "login.html",
            status=status,
            headers={"WWW-Authenticate": 'Bearer realm="protege"'} if status == 401 else None,
            csrf=token,
            next=safe_next(target),
            message=message,
            auth_disabled=self.keys.disabled,
        )
        response.set_cookie(
            SIGN_IN_COOKIE, cookie, max_age=SIGN_IN_S, **self.cookie_options(request)
        )
        return response

    def error_page(self, request: Request, exc: HTTPException) -> HTMLResponse:
        if exc.status_code == 401:
            return self.sign_in_page(request, 401, str(exc.detail))
        return self.page(
            request,
            "error.html",
            status=exc.status_code,
            headers=getattr(exc, "headers", None),
            status_code=exc.status_code,
            detail=str(exc.detail),
        )

    def cookie_options(self, request: Request) -> dict:
        return self.sessions.cookie_options(https=request.url.scheme == "https")

    def keep(self, request: Request, response, session: Session | None):
        """Set the (changed) session cookie on a response."""
        if session is not None:
            response.set_cookie(
                SESSION_COOKIE,
                self.sessions.dump(session),
                max_age=max(1, int(session.expires - time.time())),
                **self.cookie_options(request),
            )
        return response

    # ------------------------------------------------------------------ who asks

    def reviewer(self, role: str) -> Callable:
        async def check(request: Request) -> Reviewer:
            session = self.sessions.load(request.cookies.get(SESSION_COOKIE))
            if session is not None:
                identity = self._session_identity(session)
            else:
                key = presented_key(request)
                if not key or self.keys.disabled:
                    raise NotSignedIn()
                identity = self.keys.identify(key)
                if identity is None:
                    raise NotSignedIn("unknown API key")
            if not identity.has(role):
                raise HTTPException(403, f"the key of {identity.name!r} lacks the {role!r} role")
            if self.limits is not None:
                self.limits.admit_request(identity)
            return Reviewer(identity, session)

        return check

    def _session_identity(self, session: Session) -> Identity:
        if self.keys.disabled:  # a named demo reviewer, never trusted
            return Identity(session.name, ANONYMOUS.roles - {"trusted"})
        try:
            identity = self.keys.identify_digest(bytes.fromhex(session.digest))
        except ValueError:
            identity = None
        if identity is None:
            raise NotSignedIn("your key is no longer configured: sign in again")
        return identity

    async def form(self, request: Request, reviewer: Reviewer) -> FormData:
        """The form, once its CSRF token matches the session's (cookie sessions only)."""
        form = await request.form()
        if reviewer.session is not None and not same(form.get("csrf"), reviewer.session.csrf):
            raise HTTPException(
                403, "the form's CSRF token is missing or wrong: reload the page and try again"
            )
        return form

    def task(self, task: str) -> TaskSpec:
        spec = self.core.tasks.get(task)
        if spec is None:
            raise HTTPException(404, f"unknown task {task!r}; known: {sorted(self.core.tasks)}")
        return spec

    # ------------------------------------------------------------------ the improver

    def need_improver(self) -> ImproverClient:
        if self.improver is None:
            raise HTTPException(
                503,
                "the review queue is served by the improver; PROTEGE_IMPROVER_URL is unset",
                headers={"Retry-After": "60"},
            )
        return self.improver

    async def ask(self, call):
        """An improver call; a 503 page with Retry-After when it is away."""
        try:
            return await call
        except ImproverUnavailable as exc:
            retry = str(math.ceil(self.improver.timeout_s if self.improver else 60))
            raise HTTPException(503, str(exc), headers={"Retry-After": retry}) from None

    async def maybe(self, call):
        """An improver call whose answer the page can do without."""
        try:
            return await call
        except ImproverUnavailable as exc:
            log.warning("console: %s", exc)
            return None

    # ------------------------------------------------------------------ verdicts

    def send(self, reviewer: Reviewer, body: FeedbackRequest) -> None:
        """Exactly `POST /v1/feedback`'s path: the verdict quota, then the core."""
        if self.limits is not None:
            self.limits.admit_verdict(reviewer.identity)
        try:
            self.core.feedback(body, reviewer.identity)
        except UnknownPrediction:
            raise HTTPException(404, "unknown prediction id") from None
        except InputError as exc:
            raise HTTPException(422, str(exc)) from None


def verdict_of(form: FormData) -> tuple[str, str | None]:
    """(verdict, correction) from the review form: a chosen label decides (the served one
    is a thumbs-up, another a thumbs-down with that label); else thumbs up or down."""
    label = _field(form, "label", required=False)
    served = _field(form, "served", required=False)
    if label is not None:
        return ("up", None) if label == served else ("down", label)
    verdict = _field(form, "verdict", required=False)
    if verdict not in ("up", "down"):
        raise HTTPException(422, "choose thumbs up (y) or down (n), or a label (1-9, /)")
    return verdict, None


def build_console(console: Console) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    feedback_role = console.reviewer("feedback")
    admin_role = console.reviewer("admin")

    def task_of(task: str = Path(max_length=64)) -> TaskSpec:
        return console.task(task)

    # ------------------------------------------------------------------ sign in, out

    @router.get("/login")
    async def console_sign_in_form(request: Request) -> HTMLResponse:
        return console.sign_in_page(request)

    @router.post("/login")
    async def console_sign_in(request: Request):
        form = await request.form()
        token = console.sessions.sign_in_token_of(request.cookies.get(SIGN_IN_COOKIE))
        if token is None or not same(form.get("csrf"), token):
            raise HTTPException(
                403, "the sign-in form lacks its token or it expired: reload it and sign in"
            )
        target = safe_next(_field(form, "next", required=False, max_length=500))
        if console.keys.disabled:
            name = _field(form, "name")
            identity, digest = Identity(name, ANONYMOUS.roles - {"trusted"}), ""
        else:
            key = _field(form, "key", max_length=500)
            identity, digest = console.keys.identify(key), key_digest(key)
            if identity is None:
                return console.sign_in_page(request, 401, "unknown API key")
        if not identity.has("feedback"):
            raise HTTPException(
                403, f"the key of {identity.name!r} lacks the 'feedback' role the console needs"
            )
        if console.limits is not None:
            console.limits.admit_request(identity)
        session = console.sessions.new(identity.name, digest)
        response = RedirectResponse(target, 303)
        response.delete_cookie(SIGN_IN_COOKIE, path=PREFIX)
        return console.keep(request, response, session)

    @router.post("/logout")
    async def console_sign_out(request: Request, reviewer: Reviewer = Depends(feedback_role)):
        await console.form(request, reviewer)
        response = RedirectResponse(f"{PREFIX}/login", 303)
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # ------------------------------------------------------------------ reviewing

    @router.get("")
    async def console_tasks(
        request: Request, reviewer: Reviewer = Depends(feedback_role)
    ) -> HTMLResponse:
        progress = {}
        if console.improver is not None:
            for name in console.core.tasks:
                stats = await console.maybe(console.improver.review_stats(name))
                mine = [r for r in stats.reviewers if r.reviewer == reviewer.name] if stats else []
                progress[name] = mine[0] if mine else None
        return console.page(
            request,
            "tasks.html",
            reviewer=reviewer,
            specs=[console.core.tasks[name] for name in sorted(console.core.tasks)],
            progress=progress,
        )

    @router.get("/tasks/{task}")
    async def console_review(
        request: Request,
        spec: TaskSpec = Depends(task_of),
        reviewer: Reviewer = Depends(feedback_role),
    ) -> HTMLResponse:
        improver = console.need_improver()
        assignment = await console.ask(improver.take(spec.name, reviewer.name))
        stats = await console.maybe(improver.review_stats(spec.name))
        options, live_model = [], None
        if assignment.card is not None:
            live, live_model = await live_probabilities(
                spec, console.core.specialists, assignment.card.item.text
            )
            options = label_options(spec, assignment.card, live)
        mine = [r for r in stats.reviewers if r.reviewer == reviewer.name] if stats else []
        return console.page(
            request,
            "review.html",
            reviewer=reviewer,
            spec=spec,
            card=assignment.card,
            waiting=assignment.waiting,
            options=options,
            live_model=live_model,
            stats=stats,
            mine=mine[0] if mine else None,
            note=NOTES.get(request.query_params.get("note", "")),
            can_undo=bool(reviewer.session and reviewer.session.last_sent(spec.name)),
        )

    @router.post("/tasks/{task}/verdict")
    async def console_verdict(
        request: Request,
        spec: TaskSpec = Depends(task_of),
        reviewer: Reviewer = Depends(feedback_role),
    ):
        form = await console.form(request, reviewer)
        prediction_id = _field(form, "prediction_id")
        if console.core.ids.task_of(prediction_id) != spec.name:
            raise HTTPException(404, f"no prediction {prediction_id!r} of task {spec.name!r}")
        verdict, label = verdict_of(form)
        try:
            body = FeedbackRequest(
                prediction_id=prediction_id,
                verdict=verdict,
                label=label,
                comment=_field(form, "comment", required=False, max_length=MAX_COMMENT),
            )
        except ValidationError as exc:
            raise HTTPException(422, str(exc)) from None
        console.send(reviewer, body)
        if console.improver is not None:  # the verdict is sent; a lost `finish` only
            await console.maybe(  # keeps the item from others until the hold expires
                console.improver.finish(spec.name, reviewer.name, prediction_id)
            )
        response = RedirectResponse(f"{PREFIX}/tasks/{spec.name}?note=sent", 303)
        session = reviewer.session.with_sent(prediction_id) if reviewer.session else None
        return console.keep(request, response, session)

    @router.post("/tasks/{task}/skip")
    async def console_skip(
        request: Request,
        spec: TaskSpec = Depends(task_of),
        reviewer: Reviewer = Depends(feedback_role),
    ):
        form = await console.form(request, reviewer)
        prediction_id = _field(form, "prediction_id")
        improver = console.need_improver()
        await console.ask(improver.skip(spec.name, reviewer.name, prediction_id))
        return RedirectResponse(f"{PREFIX}/tasks/{spec.name}?note=skipped", 303)

    @router.post("/tasks/{task}/undo")
    async def console_undo(
        request: Request,
        spec: TaskSpec = Depends(task_of),
        reviewer: Reviewer = Depends(feedback_role),
    ):
        await console.form(request, reviewer)
        target = f"{PREFIX}/tasks/{spec.name}"
        session = reviewer.session
        prediction_id = session.last_sent(spec.name) if session else None
        if prediction_id is None:
            return RedirectResponse(f"{target}?note=nothing", 303)
        console.send(
            reviewer, FeedbackRequest(prediction_id=prediction_id, verdict=Verdict.retract)
        )
        held = False
        if console.improver is not None:
            held = bool(
                await console.maybe(console.improver.hold(spec.name, reviewer.name, prediction_id))
            )
        response = RedirectResponse(f"{target}?note={'undone' if held else 'undone-taken'}", 303)
        return console.keep(request, response, session.without(prediction_id))

    @router.get("/tasks/{task}/progress")
    async def console_progress(
        request: Request,
        spec: TaskSpec = Depends(task_of),
        reviewer: Reviewer = Depends(feedback_role),
    ) -> HTMLResponse:
        stats = await console.ask(console.need_improver().review_stats(spec.name))
        return console.page(request, "progress.html", reviewer=reviewer, spec=spec, stats=stats)

    # ------------------------------------------------------------------ the owner's page

    @router.get("/tasks/{task}/model")
    async def console_task_page(
        request: Request,
        spec: TaskSpec = Depends(task_of),
        reviewer: Reviewer = Depends(feedback_role),
    ) -> HTMLResponse:
        versions, history, champion, registry_error = [], [], None, None
        if console.watcher is None:
            registry_error = "this gateway has no model registry (PROTEGE_MLFLOW_TRACKING_URI)"
        else:
            try:
                registry = await asyncio.to_thread(lambda: console.watcher.registry)
                versions = await asyncio.to_thread(registry.list, spec.name)
                history = await asyncio.to_thread(registry.champion_history, spec.name)
            except Exception as exc:  # the registry may be away: the rest still shows
                log.exception("console: the registry of %s", spec.name)
                registry_error = f"the registry did not answer: {type(exc).__name__}: {exc}"
            champion = next((v for v in versions if "champion" in v.aliases), None)
        timeline = analysis = None
        if console.improver is not None:
            timeline, analysis = await asyncio.gather(
                console.maybe(console.improver.timeline(spec.name, CHART_BUCKETS)),
                console.maybe(console.improver.analysis(spec.name, ERRORS_SHOWN)),
            )
        decisions = [
            Decision(v.decided, v.status, v.version)
            for v in versions
            if v.decided is not None and v.status in ("promoted", "rolled_back", "rejected")
        ]
        return console.page(
            request,
            "task.html",
            reviewer=reviewer,
            spec=spec,
            versions=versions,
            history=history,
            champion=champion,
            registry_error=registry_error,
            chart=timeline_svg(timeline, decisions) if timeline else None,
            timeline=timeline,
            analysis=analysis,
            improver=console.improver is not None,
            note=NOTES.get(request.query_params.get("note", "")),
            admin=reviewer.identity.has("admin"),
        )

    async def move(request: Request, spec: TaskSpec, reviewer: Reviewer, action: str):
        form = await console.form(request, reviewer)
        version = _field(form, "version", required=False, max_length=12)
        if version is not None and not VERSION.match(version):
            raise HTTPException(422, "a version is a number")
        if console.watcher is None:
            raise HTTPException(404, "this gateway has no model registry to move")
        reason = _field(form, "reason", required=False, max_length=500)
        said = f"{action.replace('_', ' ')} from the console by {reviewer.name}"
        await move_champion(
            console.watcher,
            console.core.publish,
            spec.name,
            "promote" if action == "promoted" else "rollback",
            version,
            f"{said}: {reason}" if reason else said,
        )
        return RedirectResponse(f"{PREFIX}/tasks/{quote(spec.name)}/model?note={action}", 303)

    @router.post("/tasks/{task}/model/promote")
    async def console_promote(
        request: Request,
        spec: TaskSpec = Depends(task_of),
        reviewer: Reviewer = Depends(admin_role),
    ):
        return await move(request, spec, reviewer, "promoted")

    @router.post("/tasks/{task}/model/rollback")
    async def console_rollback(
        request: Request,
        spec: TaskSpec = Depends(task_of),
        reviewer: Reviewer = Depends(admin_role),
    ):
        return await move(request, spec, reviewer, "rolled_back")

    return router
