"""The shipped data sets load by task name, with the sizes and labels their README states,
and the tasks that train on them index labels the same way."""

from __future__ import annotations

import pytest

from protege import datasets
from protege.taskspec import DEFAULT_TASKS_FILE, load_tasks

SIZES = {
    "youtube-spam": {"train": 1586, "valid": 120, "test": 250},
    "banking77": {"train": 10003, "test": 3080},
    "review-sentiment": {"train": 1986, "test": 993},
}


@pytest.mark.parametrize("task", sorted(SIZES))
def test_every_split_loads_with_its_documented_size(task):
    assert datasets.splits(task) == tuple(SIZES[task])
    for split, size in SIZES[task].items():
        data = datasets.load(task, split)
        assert len(data) == size == len(data.labels) == len(data.y)
        assert data.task == task and data.split == split
        assert all(text.strip() for text in data.texts)


@pytest.mark.parametrize("task", sorted(SIZES))
def test_the_data_sets_labels_are_the_tasks_labels_in_the_same_order(task):
    """Every figure (label model, specialist, FM) indexes labels by position."""
    spec = load_tasks(DEFAULT_TASKS_FILE)[task]
    assert datasets.load(task, "test").label_names == spec.label_names


def test_review_sentiment_is_balanced_across_sites_and_keeps_train_and_test_apart():
    train, test = (
        datasets.load("review-sentiment", "train"),
        datasets.load("review-sentiment", "test"),
    )
    assert train.label_names == ["NEGATIVE", "POSITIVE"]
    for data in (train, test):
        share = data.y.mean()
        assert 0.49 < share < 0.51
    assert not {t.lower() for t in train.texts} & {t.lower() for t in test.texts}
    assert "The script is…was there a script?" in train.texts + test.texts


def test_an_unknown_split_or_task_is_refused_with_what_exists():
    with pytest.raises(ValueError, match="splits"):
        datasets.load("review-sentiment", "valid")
    with pytest.raises(ValueError, match="review-sentiment"):
        datasets.load("imdb")
