"""The exam: the held-out gold a candidate is judged on, and the foundation model's
answers on it, cheapest first.

The FM's answers come from (1) prediction events in the store (escalations and
shadow runs, already paid for), (2) scores cached by earlier rounds, (3) at most
`retrain.fm_eval_max` texts scored now (~0.3 s a text on CPU for 2 labels, ~5 s for
77), chosen by text hash so that later rounds extend the same sample. The FM is
scored, and the cascade threshold calibrated, on the exam rows that have an FM answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protege.improver.data.records import GoldExample, text_hash
from protege.improver.data.store import ExampleStore
from protege.improver.labeling.prompts import PromptLF
from protege.taskspec import PromptLFSpec, TaskSpec

log = logging.getLogger(__name__)

SERVING_PROMPT = "serving_prompt"  # the cache key's name for the task's own prompt


@dataclass(frozen=True)
class FoundationAnswers:
    """The FM's probabilities on some rows of the exam, and where they came from."""

    probabilities: np.ndarray  # [len(rows), C]
    rows: np.ndarray  # indices into the exam's texts
    recorded: int  # from prediction events in the store
    cached: int  # scored in an earlier round
    scored: int  # scored in this round
    exam: int  # texts in the exam

    def summary(self) -> dict:
        return {
            "rows": len(self.rows),
            "exam": self.exam,
            "recorded": self.recorded,
            "cached": self.cached,
            "scored": self.scored,
        }


@dataclass(frozen=True)
class Exam:
    """Held-out gold texts and labels, with the FM's answers on some of them."""

    texts: list[str]
    labels: list[str]
    foundation: FoundationAnswers

    def __len__(self) -> int:
        return len(self.texts)

    def foundation_rows(self, min_rows: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(FM probabilities, their exam rows) when there are enough to calibrate on."""
        if len(self.foundation.rows) < min_rows:
            return None, None
        return self.foundation.probabilities, self.foundation.rows


def serving_prompt_scorer(task: TaskSpec, backend, cache, model_name: str) -> PromptLF:
    """The FM asked with the task's serving prompt, through the prompt LFs' cached scorer."""
    spec = PromptLFSpec(name=SERVING_PROMPT, threshold=0.0, **task.prompt.model_dump())
    return PromptLF(spec, task, backend, cache, model_name)


def recorded_foundation(
    store: ExampleStore, task: TaskSpec, hashes: set[str]
) -> dict[str, np.ndarray]:
    """text hash -> FM probabilities from the latest prediction event with an FM answer.
    Events keep the top label and its probability; the rest of the mass is spread
    evenly (it keeps the argmax, which is what accuracy and calibration use)."""
    c = len(task.labels)
    found: dict[str, np.ndarray] = {}
    for h, (label, confidence) in store.foundation_answers(task.name, hashes).items():
        if label not in task.label_names:
            continue
        top = min(max(confidence, 1.0 / c), 1.0)
        row = np.full(c, (1.0 - top) / (c - 1))
        row[task.label_index(label)] = top
        found[h] = row
    return found


def foundation_answers(
    task: TaskSpec, store: ExampleStore, texts: Sequence[str], backend, cap: int, model_name: str
) -> FoundationAnswers:
    """The FM's answers on `texts`: recorded, then cached, then up to `cap` scored now.

    `backend` is a FoundationBackend or a zero-argument factory; it is loaded only when
    some text must be scored (`cap` > 0 and not everything is recorded or cached)."""
    texts = list(texts)
    hashes = [text_hash(t) for t in texts]
    recorded = recorded_foundation(store, task, set(hashes))
    probs: dict[int, np.ndarray] = {i: recorded[h] for i, h in enumerate(hashes) if h in recorded}
    n_recorded = len(probs)
    scorer = serving_prompt_scorer(task, backend, store, model_name)
    rest = [i for i in range(len(texts)) if i not in probs]
    cached = store.get_scores(scorer.key, [texts[i] for i in rest])
    for i in rest:
        if texts[i] in cached:
            probs[i] = cached[texts[i]]
    n_cached = len(probs) - n_recorded
    missing = sorted((i for i in rest if i not in probs), key=lambda i: hashes[i])[:cap]
    if missing and backend is not None:
        started = time.perf_counter()
        probs.update(zip(missing, scorer.scores([texts[i] for i in missing])))
        log.info(
            "%s: the FM scored %d held-out texts in %.1f s",
            task.name,
            len(missing),
            time.perf_counter() - started,
        )
    rows = np.array(sorted(probs), dtype=np.int64)
    matrix = np.stack([probs[i] for i in rows]) if len(rows) else np.zeros((0, len(task.labels)))
    return FoundationAnswers(
        matrix.astype(np.float32),
        rows,
        n_recorded,
        n_cached,
        len(probs) - n_recorded - n_cached,
        len(texts),
    )


def set_exam(
    task: TaskSpec, store: ExampleStore, holdout: Sequence[GoldExample], backend, model_name: str
) -> Exam:
    """The exam from the held-out gold, with the FM's answers (see module docstring)."""
    texts, labels = [g.text for g in holdout], [g.label for g in holdout]
    answers = foundation_answers(task, store, texts, backend, task.retrain.fm_eval_max, model_name)
    return Exam(texts, labels, answers)
