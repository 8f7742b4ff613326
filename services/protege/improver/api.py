"""The improver's small internal HTTP API (`PROTEGE_IMPROVER_PORT`): health for the
orchestrator and the review queue for the gateway, which serves it to reviewers as
`GET /v1/tasks/{task}/review-queue`. It lives here because the data does: the store,
the labeling functions and the last round's label model.

- `GET /livez`: 200 while the service's threads are alive and its rounds loop ticks
  (or a round is running), 503 otherwise;
- `GET /readyz`: 200 once the store answers and the intake joined its consumer group;
- `GET /v1/tasks/{task}/review-queue?limit=N&reviewer=NAME`: see `review.queue`;
- for the review console (`/review` on the gateway): `POST .../reservations/take`,
  `.../finish`, `.../hold` and `.../skip` (see `review.reservations`), `GET
  .../review-stats` (progress and agreement, `review.progress`), `GET .../timeline` (the
  owner's chart, `data.timeline`) and `GET .../analysis` (`protege lf report` and
  `protege errors`, prompt LFs from their cache only).

Internal: no auth of its own, so bind it where only the gateways reach it (loopback by
default, a cluster-internal Service in Kubernetes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse

from protege.improver.data.examples import gather
from protege.improver.data.store import ExampleStore
from protege.improver.data.timeline import timeline
from protege.improver.labeling.analysis import error_cases, lf_report
from protege.improver.labeling.functions import SOURCES
from protege.improver.labeling.label_model import LabelModelFit
from protege.improver.labeling.labeled import label_examples
from protege.improver.review import reservations
from protege.improver.review.cards import card_lfs, review_item
from protege.improver.review.progress import review_stats
from protege.improver.review.queue import (
    at_start,
    cheap_votes,
    label_model_scorer,
    queue_lfs,
    rank,
)
from protege.schemas import (
    Analysis,
    Assignment,
    ItemRequest,
    ReviewerRequest,
    ReviewQueue,
    ReviewStats,
    Timeline,
)
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)

Health = Callable[[], tuple[bool, dict]]
LabelModels = Callable[[str], tuple[LabelModelFit, tuple[str, ...]] | None]
MAX_LIMIT = 100  # items per queue request: a reviewer's session, not a bulk export
MAX_BUCKETS = 200  # the owner's chart: points enough for a wide screen
MAX_ERRORS = 100  # error cases per label on the owner's page


def review_queue(
    task: TaskSpec,
    store: ExampleStore,
    limit: int,
    reviewer: str | None,
    label_model: tuple[LabelModelFit, tuple[str, ...]] | None,
    seed: int | None = None,
) -> ReviewQueue:
    """The queue for `task` now (see `protege.improver.review.queue`), less the items
    the console has handed to other reviewers."""
    task = at_start(task, lambda: store.counts(task.name)["feedback"])
    recent = store.recent_points(task.name, task.review.window)
    held = reservations.held_elsewhere(task, store, reviewer)
    points = [x for x in recent if x.uid not in held]
    scorer = (
        label_model_scorer(task, label_model[0], label_model[1], store) if label_model else None
    )
    items = rank(
        task,
        points,
        limit=limit,
        reviewer=reviewer,
        votes=cheap_votes(task),
        label_model=scorer,
        seed=seed,
    )
    return ReviewQueue(
        task=task.name,
        reviewer=reviewer,
        window=len(recent),
        label_model=label_model is not None,
        items=[review_item(item.point, item.score, item.reasons) for item in items],
    )


def analysis(task: TaskSpec, store: ExampleStore, errors_per_label: int) -> Analysis:
    """The LF report and the error cases over the store's examples, as `protege lf
    report` and `protege errors` make them, except that prompt LFs only read their
    cached scores (a page view must not wait on the FM)."""
    data = label_examples(task, gather(store, task), queue_lfs(task, SOURCES, store))
    groups = error_cases(data, limit_per_label=None)
    return Analysis(
        task=task.name,
        lf_report=_plain(lf_report(data)),
        errors=_plain({label: cases[:errors_per_label] for label, cases in groups.items()}),
        error_totals={label: len(cases) for label, cases in groups.items()},
    )


def _plain(value):
    """Through JSON, so that numpy numbers become plain ones."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist()))


def build_improver_api(
    tasks: Mapping[str, TaskSpec],
    store: ExampleStore,
    *,
    live: Health,
    ready: Health,
    label_models: LabelModels = lambda task: None,
) -> FastAPI:
    app = FastAPI(title="Protégé improver (internal)", docs_url=None, redoc_url=None)

    def spec_of(task: str) -> TaskSpec:
        spec = tasks.get(task)
        if spec is None:
            raise HTTPException(
                404, f"this improver does not train {task!r}; it has {sorted(tasks)}"
            )
        return spec

    @app.get("/livez")
    def livez() -> JSONResponse:
        ok, detail = live()
        return JSONResponse({"live": ok, **detail}, status_code=200 if ok else 503)

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ok, detail = ready()
        return JSONResponse({"ready": ok, **detail}, status_code=200 if ok else 503)

    @app.get("/v1/tasks/{task}/review-queue", response_model=ReviewQueue)
    def queue(
        task: str,
        limit: int = Query(20, ge=1, le=MAX_LIMIT),
        reviewer: str | None = Query(None, max_length=200),
    ) -> ReviewQueue:
        return review_queue(spec_of(task), store, limit, reviewer, label_models(task))

    def scorers(spec: TaskSpec) -> dict:
        fitted = label_models(spec.name)
        return {
            "votes": cheap_votes(spec),
            "label_model": (
                label_model_scorer(spec, fitted[0], fitted[1], store) if fitted else None
            ),
        }

    @app.post("/v1/tasks/{task}/reservations/take", response_model=Assignment)
    def take(task: str, body: ReviewerRequest) -> Assignment:
        spec = spec_of(task)
        return reservations.take(
            spec, store, body.reviewer, lfs=card_lfs(spec, store), **scorers(spec)
        )

    @app.post("/v1/tasks/{task}/reservations/finish")
    def finish(task: str, body: ItemRequest) -> dict:
        return {
            "finished": reservations.finish(spec_of(task), store, body.reviewer, body.prediction_id)
        }

    @app.post("/v1/tasks/{task}/reservations/hold")
    def hold(task: str, body: ItemRequest) -> dict:
        if not reservations.hold_again(spec_of(task), store, body.reviewer, body.prediction_id):
            raise HTTPException(409, "another reviewer holds the item, or it is gone")
        return {"held": True}

    @app.post("/v1/tasks/{task}/reservations/skip")
    def skip(task: str, body: ItemRequest) -> dict:
        reservations.skip(spec_of(task), store, body.reviewer, body.prediction_id)
        return {"skipped": True}

    @app.get("/v1/tasks/{task}/review-stats", response_model=ReviewStats)
    def stats(task: str) -> ReviewStats:
        return review_stats(spec_of(task), store)

    @app.get("/v1/tasks/{task}/timeline", response_model=Timeline)
    def task_timeline(task: str, buckets: int = Query(24, ge=1, le=MAX_BUCKETS)) -> Timeline:
        spec = spec_of(task)
        return timeline(spec, store, buckets, spec.retrain.window)

    @app.get("/v1/tasks/{task}/analysis", response_model=Analysis)
    def task_analysis(task: str, errors: int = Query(5, ge=0, le=MAX_ERRORS)) -> Analysis:
        return analysis(spec_of(task), store, errors)

    return app
