"""Gold stacking (`labeling.stacking`): once reviewers have labeled some training texts,
the text and the LFs' votes, weighed on those rows, label every training text."""

from __future__ import annotations

import numpy as np
import pytest

from protege import datasets
from protege.improver.data.examples import Examples
from protege.improver.data.gold import TRAIN, task_split
from protege.improver.data.records import DataPoint, GoldExample, Review, text_hash
from protege.improver.labeling import LabelingFunction, apply_lfs
from protege.improver.labeling.label_model import fit_label_model, to_labels
from protege.improver.labeling.labeled import choose_labeler, label_examples
from protege.improver.labeling.sources import task_lfs
from protege.improver.labeling.stacking import stack_on_gold, vote_features
from protege.taskspec import DEFAULT_TASKS_FILE, load_tasks

YOUTUBE = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]


@pytest.fixture(scope="module")
def youtube():
    """The train split, its train bucket, 40 random reviewed rows there, and the rules'
    and Python LFs' votes."""
    train = datasets.load(YOUTUBE.name, "train")
    names = YOUTUBE.label_names
    y = np.array([names.index(label) for label in train.labels])
    bucket = np.array([task_split(YOUTUBE, t) == TRAIN for t in train.texts])
    reviewed = np.random.default_rng(0).choice(np.flatnonzero(bucket), 40, replace=False)
    L = apply_lfs(
        task_lfs(YOUTUBE, ("rule", "python")), names, [DataPoint(t) for t in train.texts]
    ).L
    return train, y, bucket, reviewed, L


def test_stacked_labels_beat_the_votes_alone_on_the_unreviewed_texts(youtube):
    train, y, bucket, reviewed, L = youtube
    gold_y = np.full(len(y), -1)
    gold_y[reviewed] = y[reviewed]
    stack = stack_on_gold(train.texts, L, gold_y, bucket, cardinality=2)
    assert stack is not None and stack.gold_rows == 40
    rest = bucket & (gold_y < 0)
    stacked = float((stack.probs[rest].argmax(axis=1) == y[rest]).mean())
    fit = fit_label_model(L[bucket], 2, YOUTUBE.labeling.label_model, kind="snorkel")
    probs = fit.model.predict_proba(L)
    voted = to_labels(probs, (L != -1).any(axis=1))  # -1 (wrong) where every LF abstains
    by_votes = float((voted[rest] == y[rest]).mean())
    print(f"\nunreviewed train rows: stacked {stacked:.3f}, Snorkel on the votes {by_votes:.3f}")
    assert stacked > by_votes + 0.05 and stacked > 0.85
    # The reviewed rows' probabilities are cross-fitted: honest, hence not all perfect.
    assert 0.6 < stack.gold_accuracy < 1.0


def test_too_few_reviews_or_a_single_label_means_no_stacking(youtube):
    train, y, bucket, reviewed, L = youtube
    few = np.full(len(y), -1)
    few[reviewed[:10]] = y[reviewed[:10]]
    assert stack_on_gold(train.texts, L, few, bucket, 2, min_gold=20) is None
    one_label = np.full(len(y), -1)
    one_label[reviewed] = 1
    assert stack_on_gold(train.texts, L, one_label, bucket, 2) is None


def test_vote_features_are_one_column_per_lf_and_label():
    L = np.array([[0, -1], [1, 1], [-1, -1]])
    X = vote_features(L, cardinality=2).toarray()
    assert X.tolist() == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]]


def _examples(youtube, reviewed_rows) -> Examples:
    train, y, bucket, _, _ = youtube
    names = YOUTUBE.label_names
    points = [
        DataPoint(
            t,
            served_label=names[y[i]],
            reviews=(Review("ana", "up", names[y[i]]),) if i in reviewed_rows else (),
        )
        for i, t in enumerate(train.texts)
    ]
    gold = [
        GoldExample(train.texts[i], names[y[i]], "review:confirmed", TRAIN) for i in reviewed_rows
    ]
    return Examples(points, gold)


def test_a_round_stacks_once_reviews_suffice_and_records_it(youtube):
    _, _, _, reviewed, _ = youtube
    lfs = task_lfs(YOUTUBE, ("rule", "python", "feedback"))
    labeled = label_examples(YOUTUBE, _examples(youtube, set(reviewed.tolist())), lfs)
    assert labeled.fit.summary()["name"] == "stacked"
    assert labeled.fit.choice["stacked"]["gold_rows"] >= 40
    # The feedback LFs vote exactly on the reviewed rows: they are no feature.
    assert "20 LF vote columns" in labeled.fit.choice["stacked"]["features"]
    assert labeled.labeled.all()  # every text, LF-covered or not

    few = set(reviewed[:5].tolist())
    labeled = label_examples(YOUTUBE, _examples(youtube, few), lfs)
    assert labeled.fit.summary()["name"] in ("snorkel", "majority")
    assert not labeled.labeled.all()

    off = YOUTUBE.model_copy(
        update={
            "labeling": YOUTUBE.labeling.model_copy(
                update={
                    "label_model": YOUTUBE.labeling.label_model.model_copy(update={"stack": False})
                }
            )
        }
    )
    labeled = label_examples(off, _examples(youtube, set(reviewed.tolist())), lfs)
    assert "stacked" not in labeled.fit.choice


def _specialist_accuracy(youtube, extra_lfs, reviewed_rows) -> float:
    """Test accuracy of the TF-IDF specialist one round's labels train."""
    from protege.improver.training import tfidf
    from protege.improver.training.dataset import TrainingSet
    from protege.taskspec import TrainingSpec

    lfs = task_lfs(YOUTUBE, ("rule", "python", "feedback")) + extra_lfs
    labeled = label_examples(YOUTUBE, _examples(youtube, reviewed_rows), lfs)
    model = tfidf.fit(TrainingSet.from_labeled(labeled), TrainingSpec(families=["tfidf"]))
    test = datasets.load(YOUTUBE.name, "test")
    return float((model.predict_proba(test.texts).argmax(axis=1) == test.y).mean())


@pytest.mark.parametrize(
    "name, vote",
    [
        ("random_voter", lambda x: ("HAM", "SPAM")[int(text_hash(x.text)[:8], 16) % 2]),
        ("always_ham", lambda x: "HAM"),  # as the CPU FM does
    ],
)
def test_a_random_or_constant_source_moves_test_accuracy_by_less_than_a_point(youtube, name, vote):
    _, _, bucket, _, _ = youtube
    reviewed = set(np.random.default_rng(1).choice(np.flatnonzero(bucket), 110, replace=False))
    before = _specialist_accuracy(youtube, [], reviewed)
    noisy = LabelingFunction(name, vote, task=YOUTUBE.name, source="model")
    after = _specialist_accuracy(youtube, [noisy], reviewed)
    print(f"\n{name}: test accuracy {before:.3f} -> {after:.3f}")
    assert abs(after - before) < 0.01


def test_a_rival_labeler_replaces_the_stack_only_when_it_is_significantly_better():
    y = np.array([0, 1] * 50)
    stacked = y.copy()
    stacked[:10] = 1 - y[:10]  # 90 % right
    close = y.copy()
    close[:7] = 1 - y[:7]  # 93 %: three rows ahead, on the same rows otherwise
    chosen, scores, p = choose_labeler({"stacked": stacked, "reviews_only": close}, y)
    assert chosen == "stacked" and scores["reviews_only"] > scores["stacked"]
    assert p["reviews_only"] == pytest.approx(0.125)  # 3 discordant rows, all its way
    far = y.copy()  # 100 %: ten rows ahead
    chosen, _, p = choose_labeler({"stacked": stacked, "reviews_only": close, "snorkel": far}, y)
    assert chosen == "snorkel" and p["snorkel"] < 0.01
