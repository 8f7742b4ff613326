"""Traffic replay: a data set's texts sent to the REST API as client requests, a few
at a time, with the simulated reviewers' feedback on a share of the answers.

Each answer is judged against the data set's gold label (the client never sends it)
and kept in the `RunRecord`; a request that fails is counted, not retried, as a
client in a hurry would.

>>> items = stream("youtube-spam", seed=0, limit=3)       # doctest: +SKIP
>>> asyncio.run(Replay(url, "youtube-spam", items, reviewers, record).run())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import httpx
import numpy as np

from protege import datasets
from protege.demo.record import Outcome, RunRecord
from protege.demo.reviewers import ReviewerPool

# A request waits behind the FM's batch queue on a busy 2-core machine: be patient.
REQUEST_TIMEOUT_S = 120.0


def stream(
    task: str, split: str = "train", seed: int = 0, limit: int | None = None
) -> list[tuple[str, str]]:
    """(text, gold label) pairs of a shipped data set, shuffled with `seed`."""
    data = datasets.load(task, split)
    order = np.random.default_rng(seed).permutation(len(data))
    if limit is not None:
        order = order[:limit]
    return [(data.texts[i], data.labels[i]) for i in order]


class Replay:
    """Sends `items` to `url` with `concurrency` clients; feedback from `reviewers`.

    Parameters
    ----------
    url: the gateway's base URL.
    task: the task the texts belong to.
    items: (text, gold label) pairs, sent in order.
    reviewers: who reviews which answers.
    record: where outcomes, feedback and errors go (times relative to its `started_at`).
    concurrency: requests in flight at once.
    headers: e.g. the API key.
    deadline_s: stop sending after this many seconds (None: send every item).
    transport: an httpx transport to use instead of the network (tests).
    """

    def __init__(
        self,
        url: str,
        task: str,
        items: Sequence[tuple[str, str]],
        reviewers: ReviewerPool,
        record: RunRecord,
        *,
        concurrency: int = 4,
        headers: dict[str, str] | None = None,
        reviewer_headers: dict[str, dict[str, str]] | None = None,
        deadline_s: float | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.task = task
        self.items = list(items)
        self.reviewers = reviewers
        self.record = record
        self.concurrency = max(1, concurrency)
        self.headers = headers or {}
        self.reviewer_headers = reviewer_headers or {}
        self.deadline_s = deadline_s
        self.clock = clock
        self.transport = transport
        self.sent = 0
        self.stopped_early = False

    def elapsed(self) -> float:
        return self.clock() - self.record.started_at

    async def run(self) -> None:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        for item in self.items:
            queue.put_nowait(item)
        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(
            base_url=self.url,
            headers=self.headers,
            limits=limits,
            timeout=REQUEST_TIMEOUT_S,
            transport=self.transport,
        ) as client:
            await asyncio.gather(*(self._worker(client, queue) for _ in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient, queue: asyncio.Queue) -> None:
        while not queue.empty():
            if self.deadline_s is not None and self.elapsed() > self.deadline_s:
                self.stopped_early = True
                return
            text, gold = queue.get_nowait()
            self.sent += 1
            await self.send(client, text, gold)

    async def send(self, client: httpx.AsyncClient, text: str, gold: str) -> None:
        """One request, judged and maybe reviewed."""
        try:
            response = await client.post(f"/v1/tasks/{self.task}/predict", json={"text": text})
        except httpx.HTTPError as exc:
            self.record.add_error(f"predict {type(exc).__name__}")
            return
        if response.status_code != 200:
            self.record.add_error(f"predict {response.status_code}")
            return
        prediction = response.json()["predictions"][0]
        review = self.reviewers.review(prediction["label"], gold)
        self.record.add_outcome(
            Outcome(
                t=self.elapsed(),
                route=prediction["route"],
                model=prediction["served_by"]["model"],
                version=str(prediction["served_by"]["version"]),
                correct=prediction["label"] == gold,
                latency_ms=float(prediction["latency_ms"]),
                reviewed=review is not None,
            )
        )
        if review is None:
            return
        try:
            sent = await client.post(
                "/v1/feedback",
                json=review.body(prediction["prediction_id"]),
                headers=self.reviewer_headers.get(review.reviewer),
            )
        except httpx.HTTPError as exc:
            self.record.add_error(f"feedback {type(exc).__name__}")
            return
        if sent.status_code == 200:
            self.record.add_feedback(review.verdict)
        else:
            self.record.add_error(f"feedback {sent.status_code}")
