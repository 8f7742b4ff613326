"""The gateway's way to the improver's internal API (`PROTEGE_IMPROVER_URL`), for the
review queue: over HTTP, with a short timeout, so that an improver that is away costs
reviewers a 503 and never holds a request."""

from __future__ import annotations

import logging

import httpx

from protege.schemas import ReviewQueue

log = logging.getLogger(__name__)


class ImproverUnavailable(RuntimeError):
    """The improver did not answer (or answered with an error of its own)."""


class ImproverClient:
    def __init__(self, url: str, timeout_s: float):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        # Made on first use, inside the serving event loop that will use it.
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s)
        return self._client

    async def review_queue(self, task: str, limit: int, reviewer: str | None) -> ReviewQueue:
        params: dict[str, str | int] = {"limit": limit}
        if reviewer is not None:
            params["reviewer"] = reviewer
        try:
            response = await self.client.get(f"/v1/tasks/{task}/review-queue", params=params)
        except httpx.HTTPError as exc:
            raise ImproverUnavailable(
                f"the improver at {self.url} did not answer: {exc!r}"
            ) from exc
        if response.status_code != 200:
            log.warning("improver review queue: %s %s", response.status_code, response.text[:300])
            raise ImproverUnavailable(f"the improver at {self.url} answered {response.status_code}")
        return ReviewQueue.model_validate(response.json())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
