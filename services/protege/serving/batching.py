"""A small asyncio micro-batcher: concurrent requests' texts are scored together in
one call, run on a worker thread so the event loop keeps serving. Unlike
`@serve.batch` it needs no replica context, so the same gateway core batches in
Ray Serve, under plain uvicorn and in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np


class MicroBatcher:
    def __init__(self, fn: Callable[[list[str]], np.ndarray], max_batch: int, wait_s: float):
        self.fn = fn
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._pending: list[tuple[list[str], asyncio.Future]] = []
        self._size = 0
        self._flusher: asyncio.TimerHandle | None = None

    async def __call__(self, texts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((texts, future))
        self._size += len(texts)
        if self._size >= self.max_batch:
            self._flush()
        elif self._flusher is None:
            self._flusher = loop.call_later(self.wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        pending, self._pending, self._size = self._pending, [], 0
        if pending:
            asyncio.get_running_loop().create_task(self._run(pending))

    async def _run(self, pending: list[tuple[list[str], asyncio.Future]]) -> None:
        texts = [t for chunk, _ in pending for t in chunk]
        try:
            probs = await asyncio.to_thread(self.fn, texts)
        except Exception as exc:  # every waiter learns of the failure
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for chunk, future in pending:
            if not future.done():
                future.set_result(probs[start : start + len(chunk)])
            start += len(chunk)
