"""Traffic replay: a data set's texts sent to the REST API as client requests, a few
at a time, while the simulated reviewers work through the review queue.

Each answer is judged against the data set's gold label (the client never sends it)
and kept in the `RunRecord`; a request that fails is counted, not retried, as a
client in a hurry would. Reviewers keep up with the traffic: every
`review_every_s` they may send `share` x answers-so-far verdicts in all; each takes
its turn asking `GET /v1/tasks/{task}/review-queue` with its own key and judges the
items it is handed (against the gold label the replay kept for each prediction).

>>> items = stream("youtube-spam", seed=0, limit=3)       # doctest: +SKIP
>>> asyncio.run(Replay(url, "youtube-spam", items, reviewers, record).run())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence

import httpx
import numpy as np

from protege import datasets
from protege.demo.record import Outcome, RunRecord
from protege.demo.reviewers import ReviewerPool

# A request waits behind the FM's batch queue on a busy 2-core machine: be patient.
REQUEST_TIMEOUT_S = 120.0
QUEUE_BATCH = 20  # most items a reviewer asks the queue for at once


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
    reviewer_headers: each reviewer's own headers (their API key).
    deadline_s: stop sending after this many seconds (None: send every item).
    reviews_needed: reviews an item gets before the reviewers leave it (the task's
        `review.reviews_needed`: the replay knows what it sent before the queue does).
    review_every_s: how often the reviewers catch up with the traffic.
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
        reviews_needed: int = 1,
        review_every_s: float = 1.0,
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
        self.reviews_needed = reviews_needed
        self.review_every_s = review_every_s
        self.sent = 0
        self.stopped_early = False
        self.answered: dict[str, tuple[str, str]] = {}  # prediction id -> (served, gold)
        self.reviewed: Counter[str] = Counter()  # prediction id -> verdicts sent
        self.given: set[tuple[str, str]] = set()  # (prediction id, reviewer)
        self._sending = False

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
            self._sending = True
            reviewing = asyncio.create_task(self._review_loop(client))
            try:
                await asyncio.gather(
                    *(self._worker(client, queue) for _ in range(self.concurrency))
                )
            except BaseException:
                # Ctrl-C (asyncio.run cancels this task) or a failure: no last catch-up,
                # whose queue requests can take minutes while the improver is busy.
                reviewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reviewing
                raise
            self._sending = False
            await reviewing

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
        self.answered[prediction["prediction_id"]] = (prediction["label"], gold)
        self.record.add_outcome(
            Outcome(
                t=self.elapsed(),
                route=prediction["route"],
                model=prediction["served_by"]["model"],
                version=str(prediction["served_by"]["version"]),
                correct=prediction["label"] == gold,
                latency_ms=float(prediction["latency_ms"]),
            )
        )

    # ------------------------------------------------------------------ reviewing

    def reviews_due(self) -> int:
        """Verdicts the reviewers owe: `share` of the answers so far, less those sent."""
        return int(self.reviewers.share * len(self.answered)) - sum(self.reviewed.values())

    async def _review_loop(self, client: httpx.AsyncClient) -> None:
        """Catch up every `review_every_s` while requests go out, and once more after."""
        while True:
            sending = self._sending
            await self.review_due(client)
            if not sending:
                return
            await asyncio.sleep(self.review_every_s)

    async def review_due(self, client: httpx.AsyncClient) -> None:
        """Reviewers take turns asking the queue until the verdicts due are sent, or the
        queue has nothing new for any of them."""
        idle = 0
        while self.reviews_due() > 0 and idle < len(self.reviewers.names):
            sent = await self._review_turn(client, self.reviewers.next_reviewer())
            idle = 0 if sent else idle + 1

    async def _review_turn(self, client: httpx.AsyncClient, reviewer: str) -> int:
        """One reviewer's turn: their queue, then a verdict on each item still needed."""
        headers = self.reviewer_headers.get(reviewer)
        # A share of what is due, so that the others' turns complete the items it starts.
        share = -(-self.reviews_due() // self.reviews_needed)
        try:
            response = await client.get(
                f"/v1/tasks/{self.task}/review-queue",
                params={"limit": min(share, QUEUE_BATCH), "reviewer": reviewer},
                headers=headers,
            )
        except httpx.HTTPError as exc:
            self.record.add_error(f"queue {type(exc).__name__}")
            return 0
        if response.status_code != 200:
            self.record.add_error(f"queue {response.status_code}")
            return 0
        sent = 0
        for item in response.json()["items"]:
            pid = item["prediction_id"]
            if (
                pid not in self.answered
                or (pid, reviewer) in self.given
                or self.reviewed[pid] >= self.reviews_needed
                or self.reviews_due() <= 0
                or sent >= share
            ):
                continue
            served, gold = self.answered[pid]
            review = self.reviewers.judge(reviewer, served, gold)
            self.given.add((pid, reviewer))
            self.reviewed[pid] += 1
            sent += 1
            await self._send_review(client, pid, review, headers)
        return sent

    async def _send_review(self, client, pid: str, review, headers) -> None:
        try:
            sent = await client.post("/v1/feedback", json=review.body(pid), headers=headers)
        except httpx.HTTPError as exc:
            self.record.add_error(f"feedback {type(exc).__name__}")
            return
        if sent.status_code == 200:
            self.record.add_feedback(review.verdict)
        else:
            self.record.add_error(f"feedback {sent.status_code}")
