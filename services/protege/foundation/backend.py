"""The one interface every foundation-model backend implements, and the factory
that imports only the backend a deployment chooses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from protege.schemas import ModelRef
from protege.settings import Settings
from protege.taskspec import PromptSpec, TaskSpec


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter of the base model, by the name it is served under (vLLM's and
    Ray Serve LLM's adapter model name) and the folder holding PEFT's files (None
    where the server already knows the name: the OpenAI-compatible backend)."""

    name: str
    folder: Path | None = None


class FoundationBackend(Protocol):
    ref: ModelRef

    def predict_proba(
        self,
        task: TaskSpec,
        texts: list[str],
        prompt: PromptSpec | None = None,
        adapter: Adapter | None = None,
    ) -> np.ndarray:
        """[N, C] probabilities over the task's labels, in its label order, from the
        task's prompt (or `prompt`: a prompt LF's), by the base model or `adapter`."""
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
