"""The exam: the trusted held-out gold a candidate is judged on, the calibration set
the cascade threshold is chosen on (a separate bucket), and the foundation model's
answers on both, cheapest first.

The FM's answers come from (1) prediction events in the store (escalations and
shadow runs, already paid for), (2) scores cached by earlier rounds, (3) at most
`retrain.fm_eval_max` texts scored now (~0.3 s a text on CPU for 2 labels, ~5 s for
77), chosen by text hash across both sets so that later rounds extend the same
sample. The candidate is tested against the FM on the exam rows that have an FM
answer, and the cascade is calibrated on the calibration rows that have one.
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
    origin: np.ndarray | None = None  # per row: 0 recorded, 1 cached, 2 scored now

    def part(self, start: int, stop: int) -> FoundationAnswers:
        """The answers on texts `start:stop`, their rows renumbered from 0."""
        keep = (self.rows >= start) & (self.rows < stop)
        origin = self.origin[keep] if self.origin is not None else np.zeros(0, np.int64)
        counts = [int(np.sum(origin == k)) for k in range(3)]
        return FoundationAnswers(
            self.probabilities[keep], self.rows[keep] - start, *counts, stop - start, origin
        )

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
    """Trusted held-out gold texts and labels, with the FM's answers on some of them;
    `calibration` holds the calibration bucket's, in the same form."""

    texts: list[str]
    labels: list[str]
    foundation: FoundationAnswers
    calibration: Exam | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def foundation_rows(self, min_rows: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(FM probabilities, their rows) when at least `min_rows` texts have an FM answer."""
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
    recorded_rows = {i for i, h in enumerate(hashes) if h in recorded}
    cached_rows = {i for i in rest if texts[i] in cached}
    origin = np.array(
        [0 if i in recorded_rows else 1 if i in cached_rows else 2 for i in rows], dtype=np.int64
    )
    return FoundationAnswers(
        matrix.astype(np.float32),
        rows,
        n_recorded,
        n_cached,
        len(probs) - n_recorded - n_cached,
        len(texts),
        origin,
    )


def set_exam(
    task: TaskSpec,
    store: ExampleStore,
    exam: Sequence[GoldExample],
    calibration: Sequence[GoldExample],
    backend,
    model_name: str,
) -> Exam:
    """The exam and the calibration set from trusted held-out gold, with the FM's answers
    on both (one `retrain.fm_eval_max` budget between them; see module docstring)."""
    gold = list(exam) + list(calibration)
    answers = foundation_answers(
        task, store, [g.text for g in gold], backend, task.retrain.fm_eval_max, model_name
    )
    split = len(exam)
    return Exam(
        [g.text for g in exam],
        [g.label for g in exam],
        answers.part(0, split),
        Exam(
            [g.text for g in calibration],
            [g.label for g in calibration],
            answers.part(split, len(gold)),
        ),
    )
