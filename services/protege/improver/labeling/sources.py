"""Every labeling function of a task, from its config: YAML rules, Python modules,
prompts to the foundation model, embedding-space votes, reviewer feedback and model
votes."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from protege.improver.labeling.embedding import embedding_lfs
from protege.improver.labeling.feedback import feedback_lfs
from protege.improver.labeling.functions import SOURCES, LabelingFunction
from protege.improver.labeling.models import model_lfs
from protege.improver.labeling.prompts import ScoreCache, prompt_lfs
from protege.improver.labeling.rules import rule_lfs
from protege.taskspec import TaskSpec


def task_lfs(
    task: TaskSpec,
    sources: Sequence[str] = SOURCES,
    backend: object | Callable[[], object] | None = None,
    cache: ScoreCache | None = None,
    model_name: str | None = None,
    prompt_budget: int | None = None,
) -> list[LabelingFunction]:
    """The task's LFs from the chosen sources, in a stable order.

    `backend` (a FoundationBackend or a factory of one) is needed only for prompt LFs;
    without one they ask the deployment's FM over HTTP (`foundation.remote`), connecting
    only when a text is not in the cache.
    `prompt_budget` caps the new texts each prompt LF scores per apply.
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
        lfs += prompt_lfs(task, backend, cache, model_name, budget=prompt_budget)
    if "embedding" in sources:
        lfs += embedding_lfs(task)
    if "feedback" in sources and task.labeling.feedback_votes:
        lfs += feedback_lfs(task)
    if "model" in sources:
        lfs += model_lfs(task)
    return lfs


def default_model_name() -> str:
    """The deployment's FM name without asking it, so cached prompt scores need no FM."""
    from protege.foundation.remote import served_model_name
    from protege.settings import Settings

    return served_model_name(Settings())


def _default_backend():
    """The deployment's FM over HTTP (the improver never loads one of its own)."""
    from protege.foundation.remote import RemoteFoundation
    from protege.settings import Settings

    return RemoteFoundation.from_settings(Settings())


def lfs_from_modules(modules: Sequence[str], task: str | None = None) -> list[LabelingFunction]:
    """The LFs defined at the top level of each module, for `task` (or for any task).

    A module that cannot be imported is a configuration error and raises, naming it.
    """
    found: list[LabelingFunction] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ValueError(
                f"cannot import labeling functions module {module_name!r}: {exc}"
            ) from exc
        for value in vars(module).values():
            if isinstance(value, LabelingFunction) and value.task in (None, task):
                found.append(value)
    return found
