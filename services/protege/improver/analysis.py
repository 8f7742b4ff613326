"""What the labeling functions do: per-LF coverage, overlaps, conflicts and empirical
accuracy on gold (as Snorkel's ``LFAnalysis``), the same per source and for the label
model's combined labels, and guided error analysis.

- :func:`lf_report` / :func:`format_lf_report`: ``protege lf report TASK [--json]``;
  :func:`save_lf_report` keeps a copy per training run.
- :func:`error_cases` / :func:`format_error_cases`: ``protege errors TASK``.
- :func:`youtube_reference_report`, :func:`banking77_reference_report`: the figures
  on the shipped data sets, reproducible from a benchmark.

Definitions (fractions of all N examples): *coverage*, the LF votes; *overlaps*, it
votes and another LF votes too; *conflicts*, it votes and another LF votes a different
label. *Accuracy* is over the examples with gold where it voted.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from protege.improver.label_model import (
    ABSTAIN,
    accuracy,
    fit_label_model,
    majority_proba,
    to_labels,
)
from protege.improver.labeling import LabelMatrix

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- per LF


def lf_summary(matrix: LabelMatrix, gold_y: np.ndarray | None = None) -> list[dict]:
    """One row per LF (see module docstring); ``gold_y`` is -1 where unknown."""
    L = matrix.L
    n = max(len(L), 1)
    votes = L != ABSTAIN
    n_voting = votes.sum(axis=1)
    rows = []
    for j, name in enumerate(matrix.lf_names):
        col = L[:, j]
        mine = votes[:, j]
        others = n_voting - mine > 0
        disagree = np.zeros(len(L), dtype=bool)
        for k in range(L.shape[1]):
            if k != j:
                disagree |= votes[:, k] & (L[:, k] != col)
        row = {
            "name": name,
            "source": matrix.sources[j],
            "polarity": sorted({matrix.label_names[v] for v in np.unique(col[mine])}),
            "votes": int(mine.sum()),
            "coverage": float(mine.sum() / n),
            "overlaps": float((mine & others).sum() / n),
            "conflicts": float((mine & disagree).sum() / n),
            "errors": int(matrix.errors.get(name, 0)),
        }
        row.update(_gold_stats(col, mine, gold_y))
        rows.append(row)
    return rows


def _gold_stats(pred: np.ndarray, voted: np.ndarray, gold_y: np.ndarray | None) -> dict:
    if gold_y is None:
        return {"correct": 0, "incorrect": 0, "accuracy": None}
    judged = voted & (gold_y >= 0)
    correct = int((pred[judged] == gold_y[judged]).sum())
    incorrect = int(judged.sum()) - correct
    return {
        "correct": correct,
        "incorrect": incorrect,
        "accuracy": correct / (correct + incorrect) if correct + incorrect else None,
    }


def source_summary(
    matrix: LabelMatrix, gold_y: np.ndarray | None = None, seed: int = 0
) -> list[dict]:
    """Per source (rules, prompts, ...): coverage and gold accuracy of its LFs' majority vote."""
    rows = []
    for source in dict.fromkeys(matrix.sources):
        sub = matrix.columns([source])
        covered = sub.covered
        pred = to_labels(majority_proba(sub.L, len(matrix.label_names)), covered, seed)
        rows.append(
            {
                "source": source,
                "lfs": len(sub.lf_names),
                "coverage": float(covered.mean()) if len(covered) else 0.0,
            }
            | _gold_stats(pred, covered, gold_y)
        )
    return rows


# --------------------------------------------------------------------------- report


def lf_report(data, seed: int = 0) -> dict:
    """The LF report of a :class:`~protege.improver.training_data.TrainingData`, as
    JSON-ready data: per LF, per source, combined (the label model), and the choice."""
    gold_y = data.gold_y
    labels = to_labels(data.probs, data.labeled, seed)
    combined = {
        "source": "label_model",
        "lfs": len(data.matrix.lf_names),
        "coverage": float(data.labeled.mean()) if len(data.labeled) else 0.0,
    } | _gold_stats(labels, data.labeled, gold_y)
    split = data.split
    return {
        "task": data.task.name,
        "created_at": time.time(),
        "examples": len(data.points),
        "train": int((split == "train").sum()),
        "holdout": int((split == "holdout").sum()),
        "gold": len(data.gold),
        "gold_holdout": sum(1 for g in data.gold if g.split == "holdout"),
        "label_model": data.fit.choice,
        "lfs": lf_summary(data.matrix, gold_y),
        "sources": source_summary(data.matrix, gold_y, seed),
        "combined": combined,
        "label_counts": _label_counts(labels, data.task.label_names),
    }


def save_lf_report(store, data, run_id: str | None = None) -> dict:
    """Keep a copy of the run's LF report, label-model choice included, in the store:
    call once per training run. Returns the report, with its ``report_id``."""
    report = lf_report(data)
    report["run_id"] = run_id
    report["report_id"] = store.save_report(data.task.name, "lf_report", report, run_id=run_id)
    return report


def _label_counts(labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    return {names[i]: int(c) for i, c in enumerate(counts) if c}


def _pct(value: float | None) -> str:
    return "    -" if value is None else f"{100 * value:5.1f}"


def format_lf_report(report: dict) -> str:
    """The report as a fixed-width table."""
    width = max([len(r["name"]) for r in report["lfs"]] + [len("label_model"), 12])
    head = (
        f"{'LF':<{width}}  {'source':<8}  {'cov%':>5}  {'ovl%':>5}  {'cfl%':>5}  "
        f"{'right':>5}  {'wrong':>5}  {'acc%':>5}  {'err':>4}  polarity"
    )
    summary = (
        f"task {report['task']}: {report['examples']} examples "
        f"({report['train']} train, {report['holdout']} holdout), {report['gold']} gold "
        f"({report['gold_holdout']} holdout)"
    )
    choice = report["label_model"]
    lines = [
        summary,
        f"label model: {choice.get('chosen')} ({choice.get('reason', '')})",
        "",
        head,
        "-" * len(head),
    ]
    for r in report["lfs"]:
        polarity = ",".join(r["polarity"])
        lines.append(
            f"{r['name']:<{width}}  {r['source']:<8}  {_pct(r['coverage'])}  {_pct(r['overlaps'])}  "
            f"{_pct(r['conflicts'])}  {r['correct']:>5}  {r['incorrect']:>5}  {_pct(r['accuracy'])}  "
            f"{r['errors']:>4}  {polarity[:40]}"
        )
    lines += [
        "",
        f"{'source':<{width}}  {'LFs':>4}  {'cov%':>5}  {'right':>5}  {'wrong':>5}  {'acc%':>5}",
    ]
    for r in report["sources"] + [report["combined"]]:
        lines.append(
            f"{r['source']:<{width}}  {r['lfs']:>4}  {_pct(r['coverage'])}  {r['correct']:>5}  "
            f"{r['incorrect']:>5}  {_pct(r['accuracy'])}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- errors


def error_cases(data, limit_per_label: int | None = 20, seed: int = 0) -> dict[str, list[dict]]:
    """Examples worth a look, grouped by the label model's label: the foundation model
    and the label model disagree, or a reviewer said thumbs-down. Each lists the LFs
    that voted on it."""
    names = data.task.label_names
    labels = to_labels(data.probs, data.labeled, seed)
    groups: dict[str, list[dict]] = defaultdict(list)
    for i, x in enumerate(data.points):
        lm = names[labels[i]] if labels[i] >= 0 else None
        downs = [r.reviewer for r in x.reviews if r.verdict == "down"]
        fm = x.foundation_label
        reasons = []
        if fm is not None and lm is not None and fm != lm:
            reasons.append("fm_disagrees")
        if downs:
            reasons.append("thumbs_down")
        if not reasons:
            continue
        votes = {
            data.matrix.lf_names[j]: names[v]
            for j, v in enumerate(data.matrix.L[i])
            if v != ABSTAIN
        }
        groups[lm or "(no label)"].append(
            {
                "uid": x.uid,
                "text": x.text,
                "label_model": lm,
                "confidence": float(data.probs[i].max()) if lm else None,
                "foundation": fm,
                "served": x.served_label,
                "gold": names[data.gold_y[i]] if data.gold_y[i] >= 0 else None,
                "reasons": reasons,
                "thumbs_down_by": downs,
                "corrections": sorted(
                    {r.label for r in x.reviews if r.label and r.label != r.predicted}
                ),
                "votes": votes,
            }
        )
    ordered = dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))
    if limit_per_label is not None:
        ordered = {k: v[:limit_per_label] for k, v in ordered.items()}
    return ordered


def format_error_cases(groups: dict[str, list[dict]], totals: dict[str, int] | None = None) -> str:
    if not groups:
        return "no disagreements and no thumbs-down"
    lines = []
    for label, cases in groups.items():
        total = (totals or {}).get(label, len(cases))
        lines.append(f"== {label} ({total} case{'s' if total != 1 else ''}) ==")
        for c in cases:
            conf = f" {c['confidence']:.2f}" if c["confidence"] is not None else ""
            facts = [f"label model {c['label_model']}{conf}", f"FM {c['foundation']}"]
            if c["served"]:
                facts.append(f"served {c['served']}")
            if c["thumbs_down_by"]:
                facts.append("thumbs-down by " + ",".join(c["thumbs_down_by"]))
            if c["corrections"]:
                facts.append("corrected to " + ",".join(c["corrections"]))
            if c["gold"]:
                facts.append(f"gold {c['gold']}")
            text = " ".join(c["text"].split())
            lines.append(f"  - {text[:100]!r}")
            lines.append(f"    {'; '.join(facts)}")
            votes = ", ".join(f"{k}={v}" for k, v in c["votes"].items()) or "(no LF voted)"
            lines.append(f"    votes: {votes}")
        lines.append("")
    return "\n".join(lines).rstrip()


# --------------------------------------------------------------------------- references


def youtube_reference_report(seed: int = 0) -> dict:
    """Acceptance figures on youtube: the label model from WRENCH's 10 weak labels,
    fitted on train (unlabeled), chosen on valid (gold), scored on test; next to
    majority vote and to the same pipeline run on this repo's own LFs (YAML rules +
    ``protege.tasks.youtube_spam_lfs``).

    Test accuracy counts every test example; where no LF votes, or votes tie, the
    label is a seeded coin flip (Snorkel's ``tie_break_policy='random'``, the way
    the published 84.2 % / 88.3 % were measured).
    """
    from protege import datasets
    from protege.config import DEFAULT_TASKS_FILE, load_tasks
    from protege.improver.labeling import DataPoint, LFApplier
    from protege.improver.sources import task_lfs

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
    applier = LFApplier(lfs, task.label_names)
    Ls = [applier.apply([DataPoint(t) for t in ds.texts]).L for ds in (train, valid, test)]
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
    from protege.improver.labeling import Review

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
    from protege import datasets
    from protege.config import DEFAULT_TASKS_FILE, load_tasks
    from protege.improver.labeling import DataPoint
    from protege.improver.sources import task_lfs
    from protege.improver.training_data import label_points

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
        lfs += task_lfs(task, sources=["prompt"], backend=backend, cache=cache)
        prompt_rows = np.sort(
            np.random.default_rng(seed + 7).choice(
                len(points), size=min(prompt_sample, len(points)), replace=False
            )
        )
        sample = {int(i) for i in prompt_rows}
        for lf in lfs:
            if lf.source == "prompt":
                lf.apply = _only_on(lf, sample, points)  # score the sample only
    started = time.time()
    # Every train label is known here, but gold for choosing the label model is only
    # what reviewers said: the simulated reviews.
    from protege.improver.store import GoldExample

    gold = [
        GoldExample(train.texts[i], r[1][0].label or r[1][0].predicted, "review", "train")
        for i, r in reviews.items()
    ]
    data = label_points(task, points, lfs, gold)
    truth = train.y
    labels = to_labels(data.probs, data.labeled, seed)
    per_lf = lf_summary(data.matrix, truth)
    per_source = source_summary(data.matrix, truth, seed)
    combined = {
        "source": "label_model",
        "lfs": len(lfs),
        "coverage": float(data.labeled.mean()),
    } | _gold_stats(labels, data.labeled, truth)
    # Without the reviews: what the LFs alone give on texts nobody reviewed.
    unreviewed = np.ones(len(points), dtype=bool)
    unreviewed[list(reviews)] = False
    combined_unreviewed = {"coverage": float(data.labeled[unreviewed].mean())} | _gold_stats(
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


def _only_on(lf, sample: set[int], points):
    """Wrap a prompt LF's apply so that it scores only the sampled points."""
    original = type(lf).apply

    def apply(batch):
        index = {id(x): i for i, x in enumerate(points)}
        chosen = [x for x in batch if index.get(id(x)) in sample]
        votes = dict(zip(map(id, chosen), original(lf, chosen))) if chosen else {}
        return [votes.get(id(x)) for x in batch]

    return apply


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
