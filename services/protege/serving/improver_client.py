"""The gateway's way to the improver's internal API (`PROTEGE_IMPROVER_URL`), for the
review queue and the review console: over HTTP, with a short timeout, so that an
improver that is away costs reviewers a 503 and never holds a request."""

from __future__ import annotations

import logging

import httpx
from pydantic import BaseModel

from protege.schemas import Analysis, Assignment, ReviewQueue, ReviewStats, Timeline

log = logging.getLogger(__name__)


class ImproverUnavailable(RuntimeError):
    """The improver did not answer (or answered with an error of its own)."""


class ImproverClient:
    def __init__(self, url: str, timeout_s: float, report_timeout_s: float | None = None):
        """`report_timeout_s`: the wait for the owner's reports, which refit the label
        model (default `timeout_s`)."""
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.report_timeout_s = report_timeout_s or timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        # Made on first use, inside the serving event loop that will use it.
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s)
        return self._client

    async def _call(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs
    ) -> httpx.Response:
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ImproverUnavailable(
                f"the improver at {self.url} did not answer: {exc!r}"
            ) from exc
        if response.status_code not in ok:
            log.warning(
                "improver %s %s: %s %s", method, path, response.status_code, response.text[:300]
            )
            raise ImproverUnavailable(f"the improver at {self.url} answered {response.status_code}")
        return response

    async def _get(self, model: type[BaseModel], path: str, timeout_s=None, **params):
        response = await self._call("GET", path, params=params, timeout=timeout_s or self.timeout_s)
        return model.model_validate(response.json())

    async def review_queue(self, task: str, limit: int, reviewer: str | None) -> ReviewQueue:
        params: dict[str, str | int] = {"limit": limit}
        if reviewer is not None:
            params["reviewer"] = reviewer
        return await self._get(ReviewQueue, f"/v1/tasks/{task}/review-queue", **params)

    # ------------------------------------------------------------------ the console

    async def take(self, task: str, reviewer: str) -> Assignment:
        """The item `reviewer` should judge now, reserved for them."""
        response = await self._call(
            "POST", f"/v1/tasks/{task}/reservations/take", json={"reviewer": reviewer}
        )
        return Assignment.model_validate(response.json())

    async def finish(self, task: str, reviewer: str, prediction_id: str) -> None:
        await self._item("finish", task, reviewer, prediction_id)

    async def skip(self, task: str, reviewer: str, prediction_id: str) -> None:
        await self._item("skip", task, reviewer, prediction_id)

    async def hold(self, task: str, reviewer: str, prediction_id: str) -> bool:
        """Give an item back to its reviewer (undo); False when another reviewer has it."""
        response = await self._item("hold", task, reviewer, prediction_id, ok=(200, 409))
        return response.status_code == 200

    async def _item(
        self, action: str, task: str, reviewer: str, prediction_id: str, ok=(200,)
    ) -> httpx.Response:
        return await self._call(
            "POST",
            f"/v1/tasks/{task}/reservations/{action}",
            ok=ok,
            json={"reviewer": reviewer, "prediction_id": prediction_id},
        )

    async def review_stats(self, task: str) -> ReviewStats:
        return await self._get(ReviewStats, f"/v1/tasks/{task}/review-stats")

    async def timeline(self, task: str, buckets: int) -> Timeline:
        return await self._get(Timeline, f"/v1/tasks/{task}/timeline", buckets=buckets)

    async def analysis(self, task: str, errors: int) -> Analysis:
        return await self._get(
            Analysis,
            f"/v1/tasks/{task}/analysis",
            timeout_s=self.report_timeout_s,
            errors=errors,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
