"""The improver's small internal HTTP API (`PROTEGE_IMPROVER_PORT`): health for the
orchestrator and the review queue for the gateway, which serves it to reviewers as
`GET /v1/tasks/{task}/review-queue`. It lives here because the data does: the store,
the labeling functions and the last round's label model.

- `GET /livez`: 200 while the service's threads are alive and its rounds loop ticks
  (or a round is running), 503 otherwise;
- `GET /readyz`: 200 once the store answers and the intake joined its consumer group;
- `GET /v1/tasks/{task}/review-queue?limit=N&reviewer=NAME`: see `review.queue`.

Internal: no auth of its own, so bind it where only the gateways reach it (loopback by
default, a cluster-internal Service in Kubernetes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse

from protege.improver.data.store import ExampleStore
from protege.improver.labeling.label_model import LabelModelFit
from protege.improver.review.queue import cheap_votes, label_model_scorer, rank
from protege.schemas import ReviewItem, ReviewQueue
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)

Health = Callable[[], tuple[bool, dict]]
LabelModels = Callable[[str], tuple[LabelModelFit, tuple[str, ...]] | None]
MAX_LIMIT = 100  # items per queue request: a reviewer's session, not a bulk export


def review_queue(
    task: TaskSpec,
    store: ExampleStore,
    limit: int,
    reviewer: str | None,
    label_model: tuple[LabelModelFit, tuple[str, ...]] | None,
    seed: int | None = None,
) -> ReviewQueue:
    """The queue for `task` now (see `protege.improver.review.queue`)."""
    points = store.recent_points(task.name, task.review.window)
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
        window=len(points),
        label_model=label_model is not None,
        items=[
            ReviewItem(
                prediction_id=item.prediction_id,
                text=item.point.text,
                label=item.point.served_label or "",
                confidence=item.point.extra.get("confidence"),
                margin=item.point.extra.get("margin"),
                route=item.point.extra.get("route"),
                predicted_at=float(item.point.extra.get("timestamp") or 0.0),
                reviews=len({r.reviewer for r in item.point.reviews}),
                score=item.score,
                reasons=item.reasons,
            )
            for item in items
        ],
    )


def build_improver_api(
    tasks: Mapping[str, TaskSpec],
    store: ExampleStore,
    *,
    live: Health,
    ready: Health,
    label_models: LabelModels = lambda task: None,
) -> FastAPI:
    app = FastAPI(title="Protégé improver (internal)", docs_url=None, redoc_url=None)

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
        spec = tasks.get(task)
        if spec is None:
            raise HTTPException(
                404, f"this improver does not train {task!r}; it has {sorted(tasks)}"
            )
        return review_queue(spec, store, limit, reviewer, label_models(task))

    return app
