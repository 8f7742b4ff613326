"""Prompt labeling functions: the foundation model asked in several ways, each way its
own LF. It votes its top label only when that label's probability reaches the LF's
threshold, so a weak prompt abstains instead of guessing; the label model then
learns how far to trust each one.

Scores are cached by (task, prompt, model, text) — in the example store when one is
given — so every text is scored once per prompt and a change of threshold costs nothing.
On CPU the FM is slow: a `budget` caps the texts an LF scores in one `prepare` (the
newest first); it abstains on the others until a later round scores them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from protege.improver.data.records import DataPoint
from protege.improver.labeling.functions import LabelingFunction, Vote
from protege.taskspec import PromptLFSpec, TaskSpec


class ScoreCache(Protocol):
    def get_scores(self, key: str, texts: Sequence[str]) -> dict[str, np.ndarray]: ...

    def put_scores(self, key: str, texts: Sequence[str], probs: np.ndarray) -> None: ...


class MemoryScoreCache:
    """A dict-backed ScoreCache for tests and one-off runs."""

    def __init__(self) -> None:
        self._scores: dict[tuple[str, str], np.ndarray] = {}

    def get_scores(self, key: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {t: self._scores[key, t] for t in texts if (key, t) in self._scores}

    def put_scores(self, key: str, texts: Sequence[str], probs: np.ndarray) -> None:
        for text, row in zip(texts, probs):
            self._scores[key, text] = np.asarray(row, dtype=np.float64)


def prompt_key(task: TaskSpec, spec: PromptLFSpec, model: str) -> str:
    """Changes whenever the FM would score differently: prompt, labels or model."""
    material = json.dumps(
        {
            "task": task.name,
            "model": model,
            "prompt": spec.as_prompt().model_dump(mode="json"),
            "labels": [label.model_dump(mode="json") for label in task.labels],
        },
        sort_keys=True,
    )
    return f"{task.name}:{spec.name}:" + hashlib.sha256(material.encode()).hexdigest()[:16]


class PromptLF(LabelingFunction):
    """One prompt to the foundation model, voting when it is confident enough.

    Parameters
    ----------
    spec : the prompt and its threshold.
    task : the task whose labels it scores.
    backend : a ``FoundationBackend``, or a zero-argument callable returning one; a
        callable is only called when some text is not in the cache (the deployment's
        FM is then asked over HTTP).
    cache : where scores are kept between runs.
    model_name : part of the cache key; defaults to the backend's ``ref.model``.
    budget : most uncached texts scored per `prepare` (the last points, i.e. the newest);
        ``None``: all of them.
    """

    source = "prompt"

    def __init__(
        self,
        spec: PromptLFSpec,
        task: TaskSpec,
        backend: object | Callable[[], object],
        cache: ScoreCache | None = None,
        model_name: str | None = None,
        max_batch: int = 4,
        budget: int | None = None,
    ):
        super().__init__(
            spec.name, self.vote, task=task.name, description=f"prompt, threshold {spec.threshold}"
        )
        self.spec = spec
        self.task_spec = task
        self._backend = backend
        self.cache = cache if cache is not None else MemoryScoreCache()
        self.model_name = model_name
        self.max_batch = max_batch
        self.budget = budget
        self.scored = 0  # texts sent to the FM (cache misses), for reports and tests
        self._prepared: dict[str, np.ndarray] | None = None  # text -> probs, after prepare()

    @property
    def backend(self):
        if callable(self._backend) and not hasattr(self._backend, "predict_proba"):
            self._backend = self._backend()
        return self._backend

    @property
    def key(self) -> str:
        model = self.model_name or self.backend.ref.model
        return prompt_key(self.task_spec, self.spec, model)

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """[N, C] FM probabilities for `texts` under this LF's prompt."""
        key = self.key
        unique = list(dict.fromkeys(texts))
        cached = self.cache.get_scores(key, unique)
        missing = [t for t in unique if t not in cached]
        if missing:
            task, prompt = self.task_spec, self.spec.as_prompt()
            for start in range(0, len(missing), self.max_batch):
                batch = missing[start : start + self.max_batch]
                probs = self.backend.predict_proba(task, batch, prompt=prompt)
                probs = np.asarray(probs, dtype=np.float64)
                self.cache.put_scores(key, batch, probs)
                cached.update(zip(batch, probs))
                self.scored += len(batch)
        if not texts:
            return np.zeros((0, len(self.task_spec.labels)))
        return np.stack([cached[t] for t in texts])

    def vote_from(self, probs: np.ndarray) -> Vote:
        top = int(np.argmax(probs))
        return self.task_spec.label_names[top] if probs[top] >= self.spec.threshold else None

    def prepare(self, points: Sequence[DataPoint]) -> None:
        """Score the points' texts in batches: the cached ones, and up to `budget` more."""
        texts = list(dict.fromkeys(x.text for x in points))
        cached = self.cache.get_scores(self.key, texts)
        missing = [t for t in texts if t not in cached]
        chosen = missing[::-1] if self.budget is None else missing[::-1][: self.budget]
        if chosen:
            cached.update(zip(chosen, self.scores(chosen)))
        self._prepared = cached

    def vote(self, x: DataPoint) -> Vote:
        """After `prepare`: abstain on texts it did not score; before: score on demand."""
        if self._prepared is None:
            return self.vote_from(self.scores([x.text])[0])
        probs = self._prepared.get(x.text)
        return None if probs is None else self.vote_from(probs)


def prompt_lfs(
    task: TaskSpec,
    backend: object | Callable[[], object],
    cache: ScoreCache | None = None,
    model_name: str | None = None,
    budget: int | None = None,
) -> list[LabelingFunction]:
    return [
        PromptLF(spec, task, backend, cache, model_name, budget=budget)
        for spec in task.labeling.prompt_lfs
    ]
