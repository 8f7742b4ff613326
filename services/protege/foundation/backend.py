"""The one interface every foundation-model backend implements, and the factory
that imports only the backend a deployment chooses."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from protege.schemas import ModelRef
from protege.settings import Settings
from protege.taskspec import TaskSpec


class FoundationBackend(Protocol):
    ref: ModelRef

    def predict_proba(self, task: TaskSpec, texts: list[str]) -> np.ndarray:
        """[N, C] probabilities over the task's labels, in its label order."""
        ...


def create_backend(settings: Settings) -> FoundationBackend:
    if settings.fm_backend == "transformers":
        from protege.foundation.transformers_backend import TransformersBackend

        return TransformersBackend.from_settings(settings)
    if settings.fm_backend == "vllm":
        from protege.foundation.vllm_backend import VLLMBackend

        return VLLMBackend.from_settings(settings)
    if settings.fm_backend == "openai":
        from protege.foundation.openai_backend import OpenAIBackend

        return OpenAIBackend.from_settings(settings)
    raise ValueError(f"unknown foundation backend {settings.fm_backend!r}")
