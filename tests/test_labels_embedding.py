"""Labeling functions in embedding space: zero-shot by the labels' descriptions, and
reviews propagated to their nearest neighbours, configured in the task YAML."""

from __future__ import annotations

import numpy as np
import pytest

from protege import datasets
from protege.improver.data.gold import EXAM, TRAIN, task_split
from protege.improver.data.records import DataPoint, Review
from protege.improver.labeling import apply_lfs
from protege.improver.labeling.embedding import (
    NeighbourLF,
    ZeroShotLF,
    embedding_lfs,
    uses_embeddings,
)
from protege.improver.labeling.sources import task_lfs
from protege.taskspec import DEFAULT_TASKS_FILE, load_tasks

TASKS = load_tasks(DEFAULT_TASKS_FILE)
YOUTUBE, BANKING = TASKS["youtube-spam"], TASKS["banking77"]


def with_embedding(task, **settings):
    embedding = task.labeling.embedding.model_copy(update=settings)
    return task.model_copy(
        update={"labeling": task.labeling.model_copy(update={"embedding": embedding})}
    )


def test_the_yaml_turns_them_on_per_task():
    assert embedding_lfs(YOUTUBE) == []  # off by default
    assert [lf.name for lf in embedding_lfs(BANKING)] == [
        "embedding_zero_shot",
        "embedding_neighbours",
    ]
    names = [lf.name for lf in task_lfs(BANKING, ("rule", "embedding"))]
    assert names[-2:] == ["embedding_zero_shot", "embedding_neighbours"]
    assert {lf.source for lf in embedding_lfs(BANKING)} == {"embedding"}


def test_the_stack_embeds_when_a_source_or_a_minilm_family_needs_the_vectors_anyway():
    def families(task, *names):
        return task.model_copy(
            update={"training": task.training.model_copy(update={"families": list(names)})}
        )

    assert uses_embeddings(families(YOUTUBE, "tfidf", "minilm"))  # no source, a MiniLM family
    assert uses_embeddings(families(YOUTUBE, "minilm-ft"))
    assert not uses_embeddings(families(YOUTUBE, "tfidf"))  # nothing would encode the texts
    assert uses_embeddings(families(BANKING, "tfidf"))  # its embedding sources do


def test_zero_shot_votes_by_the_label_descriptions_far_above_chance():
    test = datasets.load(BANKING.name, "test")
    rows = np.random.default_rng(0).permutation(len(test))[:300]
    points = [DataPoint(test.texts[i]) for i in rows]
    votes = apply_lfs([ZeroShotLF(BANKING)], BANKING.label_names, points).L[:, 0]
    voted = votes >= 0
    accuracy = float((votes[voted] == test.y[rows][voted]).mean())
    print(f"\nbanking77 zero-shot: covers {voted.mean():.2f} at {accuracy:.2f}")
    assert voted.mean() > 0.2 and accuracy > 10 / 77  # chance is 1/77


def _point(text: str, label: str | None) -> DataPoint:
    reviews = (Review("ana", "up", label),) if label else ()
    return DataPoint(text, served_label=label, reviews=reviews)


def test_neighbours_carry_reviews_to_similar_texts_but_not_to_themselves():
    task = with_embedding(YOUTUBE, neighbours=True, neighbours_k=3, neighbours_min_agreement=0.6)
    train = datasets.load(YOUTUBE.name, "train")
    in_train = [
        (t, lab) for t, lab in zip(train.texts, train.labels) if task_split(task, t) == TRAIN
    ]
    reviewed = in_train[:40]
    unreviewed = in_train[40:240]
    points = [_point(t, lab) for t, lab in reviewed] + [_point(t, None) for t, _ in unreviewed]
    lf = NeighbourLF(task)
    votes = apply_lfs([lf], task.label_names, points).L[:, 0]
    truth = np.array([task.label_names.index(lab) for _, lab in reviewed + unreviewed])
    voted = votes >= 0
    assert voted[40:].any()
    assert (votes[40:][voted[40:]] == truth[40:][voted[40:]]).mean() > 0.8
    # A reviewed text's own review never votes on it: without that review, its vote is
    # the same.
    for i in range(5):
        alone = [*points[:i], _point(reviewed[i][0], None), *points[i + 1 :]]
        assert apply_lfs([lf], task.label_names, alone).L[i, 0] == votes[i]


def test_reviews_in_the_exam_bucket_are_never_neighbours():
    task = with_embedding(YOUTUBE, neighbours=True, neighbours_k=1, neighbours_min_similarity=0.0)
    train = datasets.load(YOUTUBE.name, "train")
    exam = [t for t in train.texts if task_split(task, t) == EXAM][:5]
    fresh = "a brand new comment about this song"
    points = [_point(t, "SPAM") for t in exam] + [_point(fresh, None)]
    votes = apply_lfs([NeighbourLF(task)], task.label_names, points).L[:, 0]
    assert (votes == -1).all()  # no train-bucket review at all: nothing to propagate


@pytest.mark.parametrize("margin, expect_fewer", [(0.0, False), (0.2, True)])
def test_the_zero_shot_margin_trades_coverage(margin, expect_fewer):
    task = with_embedding(YOUTUBE, zero_shot=True, zero_shot_margin=margin)
    texts = datasets.load(YOUTUBE.name, "test").texts[:100]
    votes = apply_lfs([ZeroShotLF(task)], task.label_names, [DataPoint(t) for t in texts]).L
    coverage = float((votes >= 0).mean())
    assert (coverage < 0.9) == expect_fewer
