"""How the gateway reaches the foundation model: in-process (tests, plain uvicorn) or
through the FoundationModel deployment's handle (Ray Serve). Both expose
`score(task, texts, adapter=None) -> [N, C]` and the model's ref; `adapter` names a
task's champion adapter (`task@vN`), resolved where the FM runs."""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np

from protege.foundation.backend import FoundationBackend
from protege.schemas import ModelRef
from protege.serving.adapters import AdapterResolver, UnknownAdapter, predict_proba
from protege.taskspec import TaskSpec


class FoundationClient(Protocol):
    ref: ModelRef | None

    async def score(
        self, task: TaskSpec, texts: list[str], adapter: str | None = None
    ) -> np.ndarray: ...

    async def ready(self) -> ModelRef: ...


class LocalFoundation:
    """The backend in this process, run on a worker thread; adapters are resolved by
    `adapters` (without one, asking for an adapter is an UnknownAdapter)."""

    def __init__(self, backend: FoundationBackend, adapters: AdapterResolver | None = None):
        self.backend = backend
        self.adapters = adapters
        self.ref = backend.ref

    async def score(
        self, task: TaskSpec, texts: list[str], adapter: str | None = None
    ) -> np.ndarray:
        return await asyncio.to_thread(self._score, task, texts, adapter)

    def _score(self, task: TaskSpec, texts: list[str], adapter: str | None) -> np.ndarray:
        if adapter is None:
            return predict_proba(self.backend, task, texts)
        if self.adapters is None:
            raise UnknownAdapter(f"adapter {adapter!r}: this FM has no registry to find it in")
        return predict_proba(self.backend, task, texts, adapter=self.adapters.resolve(adapter))

    async def ready(self) -> ModelRef:
        return self.ref


class HandleFoundation:
    """The FoundationModel deployment; each text is one call so Serve batches them.

    The model's ref is asked for with the first scores, so that the first answer
    names the model that gave it even when no readiness probe reached this replica."""

    def __init__(self, handle):
        self.handle = handle
        self.ref: ModelRef | None = None

    async def score(
        self, task: TaskSpec, texts: list[str], adapter: str | None = None
    ) -> np.ndarray:
        calls = [self.handle.score.remote(task.name, t, adapter=adapter) for t in texts]
        if self.ref is None:
            await self.ready()
        rows = await asyncio.gather(*calls)
        return np.asarray(rows, dtype=np.float32)

    async def ready(self) -> ModelRef:
        self.ref = ModelRef.model_validate(await self.handle.info.remote())
        return self.ref
