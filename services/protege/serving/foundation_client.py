"""How the gateway reaches the foundation model: in-process (tests, plain uvicorn) or
through the FoundationModel deployment's handle (Ray Serve). Both expose
`score(task, texts, prompt=None, adapter=None) -> [N, C]` and the model's ref; `prompt`
names one of the task's prompt LFs (None: the task's own prompt), resolved from this
deployment's task specs, so that callers send names, never templates; `adapter` names a
task's champion adapter (`task@vN`), resolved where the FM runs."""

from __future__ import annotations

import asyncio
from typing import Protocol

import numpy as np

from protege.foundation.backend import FoundationBackend
from protege.schemas import ModelRef
from protege.serving.adapters import AdapterResolver, UnknownAdapter
from protege.taskspec import PromptSpec, TaskSpec


class UnknownPrompt(LookupError):
    """A prompt name that is none of the task's prompt LFs: the caller's mistake (a 404)."""


def prompt_spec(task: TaskSpec, name: str | None) -> PromptSpec | None:
    """The prompt LF `name`'s prompt (None for None: the task's own)."""
    if name is None:
        return None
    for spec in task.labeling.prompt_lfs:
        if spec.name == name:
            return spec.as_prompt()
    known = [spec.name for spec in task.labeling.prompt_lfs]
    raise UnknownPrompt(f"task {task.name!r} has no prompt LF {name!r}; known: {known}")


class FoundationClient(Protocol):
    ref: ModelRef | None

    async def score(
        self,
        task: TaskSpec,
        texts: list[str],
        prompt: str | None = None,
        adapter: str | None = None,
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
        self,
        task: TaskSpec,
        texts: list[str],
        prompt: str | None = None,
        adapter: str | None = None,
    ) -> np.ndarray:
        spec = prompt_spec(task, prompt)
        return await asyncio.to_thread(self._score, task, texts, spec, adapter)

    def _score(
        self, task: TaskSpec, texts: list[str], prompt: PromptSpec | None, adapter: str | None
    ) -> np.ndarray:
        if adapter is None:
            return self.backend.predict_proba(task, texts, prompt)
        if self.adapters is None:
            raise UnknownAdapter(f"adapter {adapter!r}: this FM has no registry to find it in")
        return self.backend.predict_proba(
            task, texts, prompt, adapter=self.adapters.resolve(adapter)
        )

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
        self,
        task: TaskSpec,
        texts: list[str],
        prompt: str | None = None,
        adapter: str | None = None,
    ) -> np.ndarray:
        prompt_spec(task, prompt)  # an unknown name fails here, before any call
        named = {"prompt": prompt, "adapter": adapter}
        options = {k: v for k, v in named.items() if v is not None}
        calls = [self.handle.score.remote(task.name, t, **options) for t in texts]
        if self.ref is None:
            await self.ready()
        rows = await asyncio.gather(*calls)
        return np.asarray(rows, dtype=np.float32)

    async def ready(self) -> ModelRef:
        self.ref = ModelRef.model_validate(await self.handle.info.remote())
        return self.ref
