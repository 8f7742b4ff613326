"""Quality on a task's test split: the FM zero-shot, the label model, the specialist
one improver round makes, the trivial answers on the same reviews (the majority
class, each family trained on the reviewed rows alone) and a fully supervised
specialist (the upper bound), next to the published reference points.
`quality_youtube.py`, `quality_banking77.py` and `quality_sentiment.py` run it for
one task each (all at once would pass the 10-minute bound on 2 cores: Snorkel's
model alone takes ~45 s a fit on 77 labels); the README puts them side by side.

Why. The loop's promise is that cheap labels (rules, the FM's votes, reviewers on a
share of traffic) combined by a label model make a specialist far better than the
FM and close to one trained on every label. And it must beat what its reviews buy
without it: the same reviewed rows, a model trained on them alone. This puts them
all on the same test texts.

How, per task (train split as day-0 traffic, test split for every figure):

- FM zero-shot: SmolLM2-135M (the transformers backend, as served) on the test
  split, youtube all 250 texts, banking77 a seeded sample (~3.5 s a text on CPU for
  77 labels); each run stops at a time budget and the JSON says how many texts it
  scored.
- Label model: the task's rules and Python LFs (deploy/tasks.yaml), fitted on train,
  chosen (Snorkel vs majority vote) on the reviewed share of train, applied to the
  test texts' LF votes. Accuracy counts every test text (a random label where no LF
  votes, as the published figures do); coverage and accuracy where they vote apart.
  youtube also with WRENCH's 10 LFs (`_references.youtube_reference_report`).
- Specialist after the loop: every train text stored as a prediction event, a seeded
  `--review-share` of them reviewed (`_references.simulate_reviews`), then one improver
  round (`protege.improver.loop.run_round`: label model over the LFs and reviews,
  distillation into the task's families (deploy/tasks.yaml: TF-IDF and MiniLM, the
  better on validation kept), the gate on the held-out gold with
  `--fm-exam` FM answers, promotion in MLflow) on a private home; the promoted
  specialist scored on the whole test split.
- Reviews only: each of the same families trained on the reviewed texts alone, with
  the reviewers' labels, as the store holds them after the round (one row per distinct
  text): the train bucket's (exactly the gold the round's specialist learnt from; the
  exam and calibration buckets' gold judges it and is never trained on), and all of it
  (what a team that skipped the loop would train on). Majority class: the most
  frequent label of the train bucket's gold.
- Fully supervised: each of the same families trained on every train label.

    python bench/quality_youtube.py            # ~4 minutes on 2 cores
    python bench/quality_banking77.py          # ~8 minutes
    python bench/quality_sentiment.py          # ~5 minutes
    python bench/quality_banking77.py --fm-sample 2 --fm-exam 0   # a quick check
    python bench/quality_youtube.py --families tfidf minilm minilm-ft --results quality_youtube_ft
                                    # the fine-tuned family too, in every row (~10 minutes)
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results
from foundation import timed_scores

# services/protege/data/README.md (test accuracy, %): what the literature and the data's
# curators measured, quoted so that the table reads without that folder.
PUBLISHED = {
    "youtube-spam": {
        "majority vote of Snorkel's LFs": 84.2,
        "Snorkel LabelModel": 88.3,
        "end model on the LabelModel's labels (Snorkel tutorial)": 92.8,
        "RoBERTa end model, WRENCH LFs": 94.9,
        "zero-shot T0++ prompt": 58.7,
        "100 hand-labelled examples": 89.6,
        "TF-IDF + LR, all train labels": 95.2,
        "MiniLM + LR, all train labels": 93.6,
        "SmolLM2-135M zero-shot": 53.5,
    },
    "banking77": {
        "TF-IDF + LR, all train labels": 91.2,
        "MiniLM + LR, all train labels": 92.9,
        "TF-IDF + LR, random 10 % of train labels": 71.6,
        "MiniLM + LR, random 10 % of train labels": 83.1,
        "SmolLM2-135M zero-shot": 4.0,  # 2 of 50
    },
    # The data set has no standard split; its paper learns from review-level labels.
    "review-sentiment": {},
}


def store_traffic(store, task, texts, labels, review_share: float, seed: int) -> dict:
    """Train texts as the FM's day-0 prediction events, a seeded `review_share` of them
    reviewed; returns the reviews (row -> (served label, reviews))."""
    from _references import simulate_reviews
    from protege.schemas import (
        FeedbackEvent,
        LabelProbability,
        ModelRef,
        PredictionEvent,
        Route,
        Verdict,
    )

    reviews = simulate_reviews(texts, labels, task.label_names, review_share, seed=seed)
    fm = ModelRef(model="smollm2-135m-instruct", version="day-0")
    events = []
    for i, text in enumerate(texts):
        served = reviews[i][0] if i in reviews else task.label_names[0]
        pid = f"{task.name}.bench{i}.sig"
        events.append(
            PredictionEvent(
                prediction_id=pid,
                task=task.name,
                text=text,
                label=served,
                probabilities=[LabelProbability(label=served, probability=0.2)],
                route=Route.foundation,
                served_by=fm,
                latency_ms=0.0,
                timestamp=float(i),
            )
        )
        if i in reviews:
            review = reviews[i][1][0]
            events.append(
                FeedbackEvent(
                    prediction_id=pid,
                    task=task.name,
                    verdict=Verdict(review.verdict),
                    label=review.label,
                    reviewer=review.reviewer,
                    # The bench's reviewer is the task's owner: their labels may grade.
                    trusted=True,
                    timestamp=float(i) + 0.5,
                )
            )
    for start in range(0, len(events), 2000):
        store.record_many(events[start : start + 2000])
    return reviews


def label_model_on_test(task, train, test, reviewed: list[int], seed: int) -> dict:
    """The task's rule + Python LFs: label model fitted on train, chosen on the reviewed
    rows, scored on test."""
    from protege.improver.labeling import ABSTAIN, DataPoint, apply_lfs
    from protege.improver.labeling.label_model import accuracy, fit_label_model, to_labels
    from protege.improver.labeling.sources import task_lfs

    lfs = task_lfs(task, sources=("rule", "python"))
    L_train = apply_lfs(lfs, task.label_names, [DataPoint(t) for t in train.texts]).L
    L_test = apply_lfs(lfs, task.label_names, [DataPoint(t) for t in test.texts]).L
    rows = np.asarray(sorted(reviewed), dtype=np.int64)
    fit = fit_label_model(
        L_train,
        len(task.label_names),
        task.labeling.label_model,
        gold_L=L_train[rows],
        gold_y=train.y[rows],
    )
    covered = (L_test != ABSTAIN).any(axis=1)
    pred = to_labels(fit.model.predict_proba(L_test), covered, seed)
    return {
        "lfs": len(lfs),
        "chosen": fit.kind,
        "choice": fit.choice,
        "test_accuracy": accuracy(pred, test.y, seed, cardinality=len(task.label_names)),
        "test_coverage": float(covered.mean()),
        "test_accuracy_covered": float((pred[covered] == test.y[covered]).mean())
        if covered.any()
        else None,
    }


def specialist_accuracy(folder: Path, test) -> float:
    from protege.improver.judge.evaluate import evaluate_specialist

    evaluation = evaluate_specialist(
        folder, test.texts, test.labels, test.label_names, latency_samples=0
    )
    return evaluation.metrics.accuracy


def families_on(task, texts, labels, test, tmp: Path, tag: str) -> dict:
    """Each of the task's families trained on (texts, labels) as gold, scored on test;
    the best family's accuracy alongside (chosen on test: an upper bound for the row)."""
    from protege.improver.training.dataset import TrainingSet
    from protege.improver.training.distill import FAMILIES

    data = TrainingSet.from_gold(task.label_names, list(texts), list(labels))
    out: dict = {"rows": len(data), "families": {}}
    for family in task.training.families:
        started = time.perf_counter()
        files = FAMILIES[family].train(data, task.training, progress=False)
        folder = files.write(
            tmp / f"{tag}-{task.name}-{family}",
            task=task.name,
            labels=task.label_names,
            version=tag,
        )
        out["families"][family] = {
            "test_accuracy": specialist_accuracy(folder, test),
            "train_seconds": time.perf_counter() - started,
        }
    best = max(out["families"], key=lambda f: out["families"][f]["test_accuracy"])
    out |= {"best_family": best, "test_accuracy": out["families"][best]["test_accuracy"]}
    return out


def supervised(task, train, test, tmp: Path) -> dict:
    """Each of the task's families trained on every train label: the upper bound of what
    labels can buy."""
    return families_on(task, train.texts, train.labels, test, tmp, "supervised")


def majority_class(task, labels: list[str], test) -> dict:
    """The trivial answer: always the most frequent reviewed label (ties: the task's
    first label)."""
    counts = [labels.count(name) for name in task.label_names]
    label = task.label_names[int(np.argmax(counts))]
    return {"label": label, "test_accuracy": float(np.mean([y == label for y in test.labels]))}


def reviews_only(task, gold: list, test, tmp: Path) -> dict:
    """What the reviews buy without the loop, on the very gold the round was given (the
    store's: one row per distinct text, the reviewer's label): each family trained on
    the train bucket's gold alone (what the round's specialist learnt from; the exam and
    calibration buckets' gold judges and calibrates, never trains) and on all of it, and
    the majority class of the train bucket's gold."""
    from protege.improver.data.gold import TRAIN

    bucket = [g for g in gold if g.split == TRAIN]

    def on(rows: list, tag: str) -> dict:
        return families_on(task, [g.text for g in rows], [g.label for g in rows], test, tmp, tag)

    return {
        "train_bucket": on(bucket, "reviews-train-bucket"),
        "all_reviews": on(gold, "reviews-all"),
        "majority": majority_class(task, [g.label for g in bucket], test),
    }


def loop_round(task, train, test, settings, args, backend) -> tuple[dict, dict, list]:
    """One improver round on day-0 traffic with reviews; (its figures, the reviews, the
    gold the store made of them)."""
    from protege.improver.data.examples import gather
    from protege.improver.data.store import ExampleStore
    from protege.improver.loop import run_round
    from protege.registry import Registry

    store = ExampleStore.from_settings(settings)
    registry = Registry.from_settings(settings)
    reviews = store_traffic(store, task, train.texts, train.labels, args.review_share, args.seed)
    result = run_round(
        task,
        store,
        registry,
        settings,
        trigger="bench",
        backend=backend,
        use_ray=False,
        progress=False,
    )
    out = {
        "outcome": result.outcome,
        "reasons": list(result.reasons or []),
        "seconds": result.seconds,
        "reviewed": len(reviews),
        "data": result.data,
        "foundation_answers_on_exam": result.foundation,
    }
    if result.judgement is not None:
        judgement = result.judgement
        out["family"] = result.family
        out["exam_accuracy"] = judgement.candidate.metrics.accuracy
        # The round's own trivial answers on its exam (the gate's baselines).
        out["exam_reviews_only_accuracy"] = (
            judgement.reviews_only.metrics.accuracy if judgement.reviews_only else None
        )
        out["exam_majority_accuracy"] = judgement.majority.accuracy if judgement.majority else None
        out["labels_from"] = result.label_model[0].summary()["name"] if result.label_model else None
        out["threshold"] = (
            result.judgement.calibration.threshold if result.judgement.calibration else None
        )
    if result.version is not None:
        out["version"] = result.version
        out["test_accuracy"] = specialist_accuracy(
            registry.download(task.name, version=result.version), test
        )
    return out, reviews, gather(store, task).gold


def fm_zero_shot(backend, task, test, sample: int, budget_s: float, seed: int) -> dict:
    """The FM on a seeded sample of test (all of it when `sample` covers it)."""
    rows = np.random.default_rng(seed + 11).permutation(len(test))[:sample]
    texts = [test.texts[i] for i in rows]
    probs, per_s = timed_scores(backend, task, texts, budget_s, label=f"FM on {task.name}")
    scored = rows[: len(probs)]
    return {
        "texts": len(probs),
        "of": len(test),
        "texts_per_s": per_s,
        "test_accuracy": float((probs.argmax(axis=1) == test.y[scored]).mean()),
    }


def round_task_spec(settings, name: str, args):
    base = settings.load_tasks()[name]
    retrain = base.retrain
    return base.model_copy(
        update={
            "training": base.training.model_copy(
                update={"families": args.families or base.training.families, "seed": args.seed}
            ),
            # The FM's exam and calibration answers are all a round pays the FM for here.
            "retrain": retrain.model_copy(
                update={"fm_eval_max": args.fm_exam, "prompt_lf_budget": 0}
            ),
        }
    )


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def per_family(row: dict) -> str:
    return ", ".join(f"{f} {pct(v['test_accuracy'])}" for f, v in row["families"].items())


def print_summary(name: str, r: dict) -> None:
    """The task's column of the README's quality table, and the gaps between its rows."""
    lm, loop, fm, alone = r["label_model"], r["loop"], r["fm"], r["reviews_only"]
    bucket, every = alone["train_bucket"], alone["all_reviews"]
    rows = [
        ("FM zero-shot (SmolLM2-135M)", f"{pct(fm['test_accuracy'])} ({fm['texts']} texts)"),
        (
            f"majority class of the {bucket['rows']} reviewed training texts",
            f"{pct(alone['majority']['test_accuracy'])} ({alone['majority']['label']})",
        ),
        (
            "label model, rules + Python LFs",
            (
                f"{pct(lm['test_accuracy'])} (covers "
                f"{pct(lm['test_coverage'])} at {pct(lm['test_accuracy_covered'])})"
            ),
        ),
        (f"reviews only: the round's {bucket['rows']} reviewed training texts", per_family(bucket)),
        (f"reviews only: all {every['rows']} reviewed texts", per_family(every)),
        (
            "specialist after one round",
            (
                f"{pct(loop.get('test_accuracy'))} "
                f"({loop.get('family')}, {loop['outcome']}, {loop['reviewed']} reviews, "
                f"labels: {loop.get('labels_from')})"
            ),
        ),
        ("fully supervised", per_family(r["supervised"])),
    ]
    print(f"\n| {name} ({r['test']} test texts) | accuracy |\n|---|---|")
    for title, cell in rows:
        print(f"| {title} | {cell} |")
    if "wrench_lfs" in r:
        w = r["wrench_lfs"]
        print(
            f"\nWRENCH's 10 LFs: label model ({w['chosen']}) {pct(w['chosen_test_accuracy'])}, "
            f"majority vote {pct(w['majority']['test_accuracy'])}"
        )
    won = loop.get("test_accuracy") or 0.0
    same = bucket["families"].get(loop.get("family"), {}).get("test_accuracy")
    print(
        f"\nthe round's specialist: {100 * (won - fm['test_accuracy']):+.1f} points vs the FM, "
        f"{100 * (won - lm['test_accuracy']):+.1f} vs its label model, "
        f"{100 * (won - (same or 0.0)):+.1f} vs its family on the same reviews alone, "
        f"{100 * (won - every['test_accuracy']):+.1f} vs the best family on all reviews, "
        f"{100 * (won - r['supervised']['test_accuracy']):+.1f} vs fully supervised"
    )
    published = "; ".join(f"{k} {v} %" for k, v in r["published"].items())
    print("published:", published or "none on this split (services/protege/data/README.md)")


def main(name: str, fm_sample: int, fm_budget: float, results: str | None = None) -> None:
    """Run every row for task `name`; `results` names bench/results/<results>.json
    (default quality_<the name's first word>)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--review-share", type=float, default=0.1, help="share of train texts a reviewer answered"
    )
    parser.add_argument(
        "--fm-sample",
        type=int,
        default=fm_sample,
        help="test texts the FM scores zero-shot (youtube ~0.45 s each on CPU, banking77 ~3.5 s)",
    )
    parser.add_argument(
        "--fm-budget", type=float, default=fm_budget, help="seconds the FM zero-shot run may take"
    )
    parser.add_argument(
        "--fm-exam",
        type=int,
        default=8,
        help="held-out gold texts a round may send to the FM (retrain.fm_eval_max)",
    )
    parser.add_argument(
        "--families",
        nargs="+",
        default=None,
        choices=["tfidf", "minilm", "minilm-ft", "minilm-setfit"],
        help="specialist families of the round and of the supervised bound "
        "(default: the task's, deploy/tasks.yaml)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--results",
        default=results,
        help="bench/results/<name>.json to write (a variant's run keeps the default's file)",
    )
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from _references import youtube_reference_report
    from protege import datasets
    from protege.foundation.backend import create_backend
    from protege.settings import Settings

    start_machine = machine()
    started = time.perf_counter()
    backend = create_backend(Settings())
    with tempfile.TemporaryDirectory(prefix="protege-bench-quality-") as tmp_name:
        tmp = Path(tmp_name)
        settings = Settings(home=tmp, improver_ray="never")
        task = round_task_spec(settings, name, args)
        train, test = datasets.load(name, "train"), datasets.load(name, "test")
        if test.label_names != task.label_names:  # every figure indexes labels alike
            raise SystemExit(f"{name}: the data set's label order is not the task's")
        out: dict = {"task": name, "train": len(train), "test": len(test)}
        stages: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            stages[stage] = round(time.perf_counter() - clock, 1)
            clock = time.perf_counter()

        out["loop"], reviews, gold = loop_round(task, train, test, settings, args, backend)
        lap("loop_round")
        out["label_model"] = label_model_on_test(task, train, test, list(reviews), args.seed)
        lap("label_model")
        out["reviews_only"] = reviews_only(task, gold, test, tmp)
        lap("reviews_only")
        out["supervised"] = supervised(task, train, test, tmp)
        lap("supervised")
        out["fm"] = fm_zero_shot(backend, task, test, args.fm_sample, args.fm_budget, args.seed)
        lap("fm_zero_shot")
        out["stage_seconds"] = stages
    if name == "youtube-spam":
        report = youtube_reference_report(args.seed)["wrench_lfs"]
        out["wrench_lfs"] = {
            k: report[k] for k in ("chosen", "chosen_test_accuracy", "majority", "test_coverage")
        }
    out["published"] = PUBLISHED[name]
    print_summary(name, out)
    path = write_results(
        args.results or f"quality_{name.split('-')[0]}",
        {
            "machine": machine() | {"load_average_at_start": start_machine["load_average_1_5_15"]},
            "review_share": args.review_share,
            "families": task.training.families,
            "fm_exam": args.fm_exam,
            "seconds": time.perf_counter() - started,
            **out,
        },
    )
    print(f"results: {path}")
