"""Labeling functions in embedding space (all-MiniLM-L6-v2, `protege.encoder`):

- ``embedding_zero_shot`` votes the label whose description the text is most similar
  to, when it leads the runner-up by `zero_shot_margin` (cosine). It needs no data at
  all: the labels' names and descriptions in the task YAML are the whole prompt.
- ``embedding_neighbours`` propagates reviews: it votes the label most of the text's
  `neighbours_k` nearest reviewed texts carry (by reviewers' corrections or
  thumbs-up), when at least `neighbours_min_agreement` of them agree and the nearest is
  within `neighbours_min_similarity`. Only reviewed texts of the train bucket are
  neighbours, and a text is never its own neighbour, so no review leaks into the exam
  or votes on the row it grades.

Embeddings are cached per text in the process, so a round re-encodes only new traffic.

>>> from protege.taskspec import load_tasks, DEFAULT_TASKS_FILE
>>> task = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]
>>> [lf.name for lf in embedding_lfs(task)]
['embedding_zero_shot', 'embedding_neighbours']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from protege.improver.data.gold import TRAIN, task_split
from protege.improver.data.records import DataPoint, text_hash
from protege.improver.data.reviews import confirmed, correction
from protege.improver.labeling.functions import LabelingFunction, Vote
from protege.taskspec import TaskSpec

CACHE_LIMIT = 200_000  # embeddings kept per process (~300 MB at 384 floats)
_cache: dict[str, np.ndarray] = {}


def embed(texts: Sequence[str]) -> np.ndarray:
    """[N, 384] unit vectors, from the cache where a text was seen before."""
    from protege.encoder import encode

    keys = [text_hash(t) for t in texts]
    missing = list({k: t for k, t in zip(keys, texts) if k not in _cache}.items())
    if missing:
        vectors = encode([t for _, t in missing], progress=len(missing) > 2000)
        if len(_cache) + len(missing) > CACHE_LIMIT:
            _cache.clear()
        _cache.update({k: v for (k, _), v in zip(missing, vectors)})
    if not keys:
        return np.zeros((0, 384), np.float32)
    return np.stack([_cache[k] for k in keys])


class EmbeddingLF(LabelingFunction):
    """Votes computed for a whole batch in `prepare`, then read one point at a time."""

    source = "embedding"

    def __init__(self, name: str, task: TaskSpec, description: str) -> None:
        super().__init__(name, self._vote, task=task.name, description=description)
        self.spec = task
        self._votes: dict[str, str | None] = {}

    def _vote(self, x: DataPoint) -> Vote:
        return self._votes.get(x.text)


class ZeroShotLF(EmbeddingLF):
    def __init__(self, task: TaskSpec) -> None:
        super().__init__(
            "embedding_zero_shot", task, "The label whose description the text is most like."
        )

    def prepare(self, points: Sequence[DataPoint]) -> None:
        texts = [x.text for x in points]
        if not texts:
            return
        labels = self.spec.labels
        described = embed([f"{lab.name.replace('_', ' ')}: {lab.description}" for lab in labels])
        sims = embed(texts) @ described.T
        top2 = np.sort(sims, axis=1)[:, -2:]
        best = sims.argmax(axis=1)
        sure = (top2[:, 1] - top2[:, 0]) >= self.spec.labeling.embedding.zero_shot_margin
        self._votes = {t: (labels[b].name if s else None) for t, b, s in zip(texts, best, sure)}


class NeighbourLF(EmbeddingLF):
    def __init__(self, task: TaskSpec) -> None:
        super().__init__(
            "embedding_neighbours", task, "The label the most similar reviewed texts carry."
        )

    def prepare(self, points: Sequence[DataPoint]) -> None:
        spec = self.spec.labeling.embedding
        reviewed: dict[str, str] = {}
        for x in points:
            label = correction(x) or confirmed(x)
            if label and task_split(self.spec, x.text) == TRAIN:
                reviewed[x.text] = label
        texts = [x.text for x in points]
        self._votes = {}
        if len(reviewed) < spec.neighbours_k or not texts:
            return
        anchors = list(reviewed)
        anchor_labels = [reviewed[t] for t in anchors]
        sims = embed(texts) @ embed(anchors).T
        own = {t: j for j, t in enumerate(anchors)}
        for i, text in enumerate(texts):
            if text in own:
                sims[i, own[text]] = -np.inf  # never its own neighbour
        k = spec.neighbours_k
        nearest = np.argsort(-sims, axis=1)[:, :k]
        for i, text in enumerate(texts):
            if sims[i, nearest[i, 0]] < spec.neighbours_min_similarity:
                continue
            label, count = Counter(anchor_labels[j] for j in nearest[i]).most_common(1)[0]
            if count / k >= spec.neighbours_min_agreement:
                self._votes[text] = label


# Specialist families that encode every training text with MiniLM.
MINILM_FAMILIES = frozenset({"minilm", "minilm-ft", "minilm-setfit"})


def uses_embeddings(task: TaskSpec) -> bool:
    """Whether a round embeds the task's texts anyway (an embedding source is on, or a
    MiniLM family trains on them), so that gold stacking uses them too: meaning
    generalises from a few reviews where n-grams do not (README "Labels")."""
    spec = task.labeling.embedding
    return spec.zero_shot or spec.neighbours or bool(MINILM_FAMILIES & set(task.training.families))


def embedding_lfs(task: TaskSpec) -> list[LabelingFunction]:
    """The task's embedding-space LFs, as its YAML (`labeling.embedding`) turns them on."""
    spec = task.labeling.embedding
    lfs: list[LabelingFunction] = []
    if spec.zero_shot:
        lfs.append(ZeroShotLF(task))
    if spec.neighbours:
        lfs.append(NeighbourLF(task))
    return lfs
