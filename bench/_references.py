"""Reference figures of the labeling functions on the shipped data sets (the
acceptance figures the labeling tests check and `bench/_quality.py` reports):

- `youtube_reference_report`: the label model from WRENCH's 10 weak labels and from
  this project's own youtube LFs, next to the published majority-vote and Snorkel
  figures;
- `banking77_reference_report`: banking77's rules, prompt LFs and simulated reviewer
  corrections, per source and combined;
- `simulate_reviews`: reviewers on a share of the texts, for both and for the bench.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from protege import datasets
from protege.improver.data.examples import Examples
from protege.improver.data.records import DataPoint, GoldExample, Review
from protege.improver.labeling.analysis import gold_stats, lf_summary, source_summary
from protege.improver.labeling.functions import ABSTAIN, LabelMatrix, apply_lfs
from protege.improver.labeling.label_model import accuracy, fit_label_model, to_labels
from protege.improver.labeling.labeled import label_examples
from protege.improver.labeling.sources import task_lfs
from protege.taskspec import DEFAULT_TASKS_FILE, load_tasks


def youtube_reference_report(seed: int = 0) -> dict:
    """Acceptance figures on youtube: the label model from WRENCH's 10 weak labels,
    fitted on train (unlabeled), chosen on valid (gold), scored on test; next to
    majority vote and to the same pipeline run on this repo's own LFs (YAML rules +
    ``protege.tasks.youtube_spam_lfs``).

    Test accuracy counts every test example; where no LF votes, or votes tie, the
    label is a seeded coin flip (Snorkel's ``tie_break_policy='random'``, the way
    the published 84.2 % / 88.3 % were measured).
    """

    train, valid, test = (datasets.load("youtube-spam", s) for s in ("train", "valid", "test"))
    task = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]
    spec = task.labeling.label_model
    out: dict = {"published": {"majority_vote": 0.842, "snorkel_label_model": 0.883}}

    def score(L_train, L_valid, L_test, names, sources) -> dict:
        result = {}
        fit = fit_label_model(L_train, 2, spec, gold_L=L_valid, gold_y=valid.y)
        for kind in ("majority", "snorkel"):
            model = fit.candidates[kind]
            probs = model.predict_proba(L_test)
            covered = (L_test != ABSTAIN).any(axis=1)
            pred = to_labels(probs, covered, seed)
            result[kind] = {
                "test_accuracy": accuracy(pred, test.y, seed, cardinality=2),
                "test_accuracy_covered": float((pred[covered] == test.y[covered]).mean()),
                "valid_accuracy": accuracy(
                    to_labels(model.predict_proba(L_valid), (L_valid != ABSTAIN).any(axis=1), seed),
                    valid.y,
                    seed,
                    cardinality=2,
                ),
            }
        matrix = LabelMatrix(L_test, list(names), list(sources), train.label_names, {})
        result["test_coverage"] = float(matrix.covered.mean())
        result["chosen"] = fit.choice["chosen"]
        result["choice"] = fit.choice
        result["chosen_test_accuracy"] = result[fit.choice["chosen"]]["test_accuracy"]
        result["lfs_on_test"] = lf_summary(matrix, test.y)
        return result

    out["wrench_lfs"] = score(
        train.weak_labels,
        valid.weak_labels,
        test.weak_labels,
        train.weak_label_names,
        ["wrench"] * len(train.weak_label_names),
    )
    lfs = task_lfs(task, sources=("rule", "python"))
    Ls = [
        apply_lfs(lfs, task.label_names, [DataPoint(t) for t in ds.texts]).L
        for ds in (train, valid, test)
    ]
    out["protege_lfs"] = score(*Ls, [lf.name for lf in lfs], [lf.source for lf in lfs])
    return out


def simulate_reviews(
    texts: Sequence[str],
    labels: Sequence[str],
    label_names: Sequence[str],
    fraction: float,
    served_accuracy: float = 0.6,
    seed: int = 0,
):
    """Reviews of a random `fraction` of the texts: each reviewed prediction served the
    true label with probability `served_accuracy` (else a random wrong one); the
    reviewer answers thumbs-up when it was right, a correction when it was not."""

    rng = np.random.default_rng(seed)
    n = len(texts)
    reviewed = rng.choice(n, size=round(fraction * n), replace=False)
    reviews: dict[int, tuple[str, tuple[Review, ...]]] = {}
    for i in reviewed:
        truth = labels[i]
        if rng.random() < served_accuracy:
            served = truth
            review = Review("sim-reviewer", "up", served, None, float(i))
        else:
            served = rng.choice([lab for lab in label_names if lab != truth])
            review = Review("sim-reviewer", "down", str(served), truth, float(i))
        reviews[int(i)] = (str(served), (review,))
    return reviews


def banking77_reference_report(
    prompt_sample: int = 40,
    review_fraction: float = 0.1,
    backend=None,
    cache=None,
    label_model_epochs: int | None = None,
    train_limit: int | None = None,
    seed: int = 0,
) -> dict:
    """Acceptance figures on banking77 train: keyword rules (deploy/tasks.yaml), prompt
    LFs and simulated reviewer corrections on `review_fraction` of train, each source's
    and the label model's coverage and accuracy against the true labels.

    Prompt LFs cost ~5 s per text on CPU (77 labels), so they score a seeded random
    `prompt_sample` of train texts and abstain elsewhere (``prompt_sample=0`` skips
    them); `cache` (e.g. an ExampleStore) keeps their scores between runs.
    """

    task = load_tasks(DEFAULT_TASKS_FILE)["banking77"]
    if label_model_epochs:
        labeling = task.labeling.model_copy(
            update={
                "label_model": task.labeling.label_model.model_copy(
                    update={"epochs": label_model_epochs}
                )
            }
        )
        task = task.model_copy(update={"labeling": labeling})
    train = datasets.load("banking77", "train")
    if train_limit:
        rows = np.random.default_rng(seed).choice(len(train), size=train_limit, replace=False)
        train = train.subset(np.sort(rows))
    reviews = simulate_reviews(
        train.texts, train.labels, task.label_names, review_fraction, seed=seed
    )
    points = [
        DataPoint(
            text,
            uid=f"train:{i}",
            served_label=reviews[i][0] if i in reviews else None,
            reviews=reviews[i][1] if i in reviews else (),
        )
        for i, text in enumerate(train.texts)
    ]
    sources = ["rule", "python", "feedback"]
    lfs = task_lfs(task, sources=sources)
    prompt_rows = np.array([], dtype=np.int64)
    if prompt_sample and task.labeling.prompt_lfs:
        prompt_rows = np.sort(
            np.random.default_rng(seed + 7).choice(
                len(points), size=min(prompt_sample, len(points)), replace=False
            )
        )
        # Score the sample now; with a budget of 0 new texts, the LFs abstain elsewhere.
        prompt = task_lfs(task, sources=["prompt"], backend=backend, cache=cache, prompt_budget=0)
        for lf in prompt:
            lf.scores([points[i].text for i in prompt_rows])
        lfs += prompt
    started = time.time()
    # Every train label is known here, but gold for choosing the label model is only
    # what reviewers said: the simulated reviews.
    gold = [
        GoldExample(train.texts[i], r[1][0].label or r[1][0].predicted, "review", "train")
        for i, r in reviews.items()
    ]
    data = label_examples(task, Examples(points, gold), lfs)
    truth = train.y
    labels = to_labels(data.probs, data.labeled, seed)
    per_lf = lf_summary(data.matrix, truth)
    per_source = source_summary(data.matrix, truth, seed)
    combined = {
        "source": "label_model",
        "lfs": len(lfs),
        "coverage": float(data.labeled.mean()),
    } | gold_stats(labels, data.labeled, truth)
    # Without the reviews: what the LFs alone give on texts nobody reviewed.
    unreviewed = np.ones(len(points), dtype=bool)
    unreviewed[list(reviews)] = False
    combined_unreviewed = {"coverage": float(data.labeled[unreviewed].mean())} | gold_stats(
        labels[unreviewed], data.labeled[unreviewed], truth[unreviewed]
    )
    return {
        "examples": len(points),
        "reviewed": len(reviews),
        "prompt_scored": len(prompt_rows),
        "prompt_accuracy_on_sample": _prompt_sample_stats(data.matrix, prompt_rows, truth),
        "label_model": data.fit.choice,
        "lfs": per_lf,
        "sources": per_source,
        "combined": combined,
        "combined_unreviewed": combined_unreviewed,
        "intents_with_rules": len({r.label for r in task.labeling.rules}),
        "seconds": round(time.time() - started, 1),
    }


def _prompt_sample_stats(matrix: LabelMatrix, rows: np.ndarray, truth: np.ndarray) -> dict:
    if not len(rows):
        return {}
    out = {}
    for j, name in enumerate(matrix.lf_names):
        if matrix.sources[j] != "prompt":
            continue
        col = matrix.L[rows, j]
        voted = col != ABSTAIN
        out[name] = {
            "scored": len(rows),
            "coverage": float(voted.mean()),
            "accuracy": float((col[voted] == truth[rows][voted]).mean()) if voted.any() else None,
        }
    return out
