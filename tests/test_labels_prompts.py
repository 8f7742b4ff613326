"""Prompt LFs: thresholds, the score cache, failure, and a run on the real CPU FM."""

from __future__ import annotations

import numpy as np
import pytest

from protege.improver.data.store import ExampleStore
from protege.improver.labeling import DataPoint, apply_lfs
from protege.improver.labeling.prompts import MemoryScoreCache, PromptLF, prompt_lfs
from protege.schemas import ModelRef
from protege.settings import Settings
from protege.taskspec import DEFAULT_TASKS_FILE, load_tasks

YOUTUBE = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]


class RecordingBackend:
    ref = ModelRef(model="fake-fm", version="1")

    def __init__(self, probs_of):
        self.probs_of = probs_of
        self.calls: list[tuple[str, list[str]]] = []

    def predict_proba(self, task, texts, prompt=None):
        self.calls.append(((prompt or task.prompt).template, list(texts)))
        return np.array([self.probs_of(t) for t in texts])


def test_each_prompt_lf_sends_its_own_prompt_and_votes_only_above_its_threshold():
    backend = RecordingBackend(lambda t: [0.2, 0.8] if "sub" in t else [0.6, 0.4])
    lfs = prompt_lfs(YOUTUBE, backend)
    matrix = apply_lfs(lfs, YOUTUBE.label_names, [DataPoint("sub to me"), DataPoint("nice")])
    assert matrix.L.tolist() == [[1, 1], [-1, -1]]  # 0.8 >= 0.75 votes; 0.6 abstains
    templates = {template for template, _ in backend.calls}
    assert templates == {spec.template for spec in YOUTUBE.labeling.prompt_lfs}


def test_scores_are_cached_so_each_text_is_scored_once_per_prompt(tmp_path):
    store = ExampleStore(f"sqlite:///{tmp_path / 's.db'}")
    backend = RecordingBackend(lambda t: [0.9, 0.1])
    points = [DataPoint(t) for t in ("a", "b", "a")]
    (lf, _) = prompt_lfs(YOUTUBE, backend, cache=store)
    apply_lfs([lf], YOUTUBE.label_names, points)
    assert lf.scored == 2
    again = PromptLF(
        YOUTUBE.labeling.prompt_lfs[0],
        YOUTUBE,
        lambda: pytest.fail("FM loaded"),
        store,
        model_name="fake-fm",
    )
    votes = apply_lfs([again], YOUTUBE.label_names, points).L[:, 0].tolist()
    assert votes == [0, 0, 0] and again.scored == 0


def test_a_failing_fm_makes_the_prompt_lf_abstain_and_counts_every_example():
    class Down:
        ref = ModelRef(model="down", version="1")

        def predict_proba(self, task, texts, prompt=None):
            raise ConnectionError("FM endpoint unreachable")

    (lf, _) = prompt_lfs(YOUTUBE, Down(), MemoryScoreCache())
    matrix = apply_lfs([lf], YOUTUBE.label_names, [DataPoint("a"), DataPoint("b")])
    assert matrix.L.tolist() == [[-1], [-1]] and matrix.errors[lf.name] == 2


def test_prompt_lfs_on_the_real_cpu_foundation_model(tmp_path):
    from protege.foundation.transformers_backend import TransformersBackend

    backend = TransformersBackend.from_settings(Settings())
    store = ExampleStore(f"sqlite:///{tmp_path / 's.db'}")
    texts = [
        "Check out my channel and subscribe! http://bit.ly/x",
        "Love this song so much",
    ]  # ~0.3 s per text and prompt on 2 free cores
    lfs = prompt_lfs(YOUTUBE, backend, cache=store)
    matrix = apply_lfs(lfs, YOUTUBE.label_names, [DataPoint(t) for t in texts])
    assert matrix.L.shape == (2, 2) and set(np.unique(matrix.L)) <= {-1, 0, 1}
    for lf in lfs:
        probs = lf.scores(texts)  # now from the cache
        assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
        assert lf.scored == 2
