"""Every labeling function of a task, from its config: YAML rules, Python modules,
prompts to the foundation model, reviewer feedback and model votes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from protege.config import TaskSpec
from protege.improver.feedback_lfs import feedback_lfs
from protege.improver.labeling import LabelingFunction, lfs_from_modules
from protege.improver.model_lfs import model_lfs
from protege.improver.prompt_lfs import ScoreCache, prompt_lfs
from protege.improver.rules import rule_lfs

SOURCES = ("rule", "python", "prompt", "feedback", "model")


def task_lfs(
    task: TaskSpec,
    sources: Sequence[str] = SOURCES,
    backend: object | Callable[[], object] | None = None,
    cache: ScoreCache | None = None,
    model_name: str | None = None,
) -> list[LabelingFunction]:
    """The task's LFs from the chosen sources, in a stable order.

    `backend` (a FoundationBackend or a factory of one) is needed only for prompt LFs;
    without one they are built from the deployment's settings when first needed.
    """
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown LF sources {sorted(unknown)}; choose from {SOURCES}")
    lfs: list[LabelingFunction] = []
    if "rule" in sources:
        lfs += rule_lfs(task)
    if "python" in sources:
        lfs += lfs_from_modules(task.labeling.python_modules, task.name)
    if "prompt" in sources and task.labeling.prompt_lfs:
        if backend is None:
            backend, model_name = _default_backend, model_name or default_model_name()
        lfs += prompt_lfs(task, backend, cache, model_name)
    if "feedback" in sources and task.labeling.feedback_votes:
        lfs += feedback_lfs(task)
    if "model" in sources:
        lfs += model_lfs(task)
    return lfs


def default_model_name() -> str:
    """The deployment's FM name without loading it, so cached prompt scores need no FM."""
    from pathlib import Path

    from protege.config import Settings

    settings = Settings()
    if settings.fm_model:
        return (
            Path(settings.fm_model).name
            if settings.fm_backend == "transformers"
            else settings.fm_model
        )
    from protege.foundation.smollm import MODEL_NAME

    return MODEL_NAME


def _default_backend():
    from protege.config import Settings
    from protege.foundation.backend import create_backend

    return create_backend(Settings())
