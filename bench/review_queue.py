"""The review queue vs random sampling, at equal review counts: which K reviewed texts
teach a specialist more?

Why. Reviewers' time is the scarcest input of the loop. The queue
(`protege.improver.review.queue`) sends them the predictions that are unsure or
disputed (low margin, specialist vs FM, conflicting labeling functions, the label
model against the served answer), plus a random audit tenth; the claim is that those
reviews teach more than as many reviews of random traffic.

How, per task, offline (no Ray, no Kafka, no FM calls):

- Day-0 traffic: the train split, minus a small seed set. The serving specialist is the
  task's TF-IDF family trained on the seed set (youtube 20 texts, banking77 2 a class);
  its probabilities give each prediction its served label and margin. Where it is
  below the task's cascade threshold the FM answered too, as the CPU FM does: youtube
  HAM for everything, banking77 one fixed intent (SmolLM2's answers are that flat).
- The queue ranks that traffic as the improver would: margins, specialist/FM
  disagreement, the rules' and Python LFs' conflicts, and a label model (majority vote,
  fitted on the traffic's LF votes) against the served label; `review.audit_share` of
  the K slots are audit draws.
- Random: K texts of the same traffic, uniformly.
- Reviewers are right (the data set's label). The same family (TF-IDF + LR,
  `protege.improver.training.tfidf.fit`) is trained, and scored on the test split, two
  ways: `alone`, on the seed set plus the K reviewed texts (what the reviews teach by
  themselves); `with LFs`, as the loop trains, on the label model's labels of the
  traffic it covers with the K reviews overriding them (what the reviews add to the
  labeling functions). Several K, several seeds (the seed set, the random draw and the
  audit draw change with it).

    python bench/review_queue.py              # ~3-6 minutes on 2 cores
    python bench/review_queue.py --seeds 1    # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results

SETUPS = {
    # seed texts, K values, the FM's constant answer, seeds (banking77's 77-way fits on
    # ~4,000 LF-labeled texts take most of the 10 minutes)
    "youtube-spam": {"seed": 20, "k": [25, 50, 100, 200], "fm": "HAM", "seeds": 3},
    "banking77": {"seed_per_class": 2, "k": [308, 616], "fm": "card_arrival", "seeds": 2},
}


def seed_rows(y: np.ndarray, setup: dict, rng: np.random.Generator) -> np.ndarray:
    if "seed_per_class" in setup:
        return np.concatenate(
            [
                rng.permutation(np.flatnonzero(y == c))[: setup["seed_per_class"]]
                for c in np.unique(y)
            ]
        )
    return rng.permutation(len(y))[: setup["seed"]]


def with_lfs(train, points, lm: np.ndarray, reviewed: list[int], task) -> tuple[list, list]:
    """The loop's training rows: the label model's label where it has one, the reviewers'
    where they reviewed."""
    labels = {
        p.extra["row"]: task.label_names[int(np.argmax(lm[j]))]
        for j, p in enumerate(points)
        if np.all(np.isfinite(lm[j]))
    }
    labels.update({i: train.labels[i] for i in reviewed})
    return [train.texts[i] for i in labels], list(labels.values())


def train_and_score(task, texts, labels, test) -> float:
    from protege.improver.training import TrainingSet, tfidf

    data = TrainingSet.from_gold(task.label_names, texts, labels)
    model = tfidf.fit(data, task.training)
    return float((model.predict_proba(test.texts).argmax(axis=1) == test.y).mean())


def traffic_points(task, train, pool: np.ndarray, server, fm_label: str) -> list:
    """The pool as the store would hold it: served label, margin, the FM where it answered."""
    from protege.improver.data.records import DataPoint

    probs = server.predict_proba([train.texts[i] for i in pool])
    top2 = np.sort(probs, axis=1)[:, -2:]
    points = []
    for row, i in enumerate(pool):
        served = task.label_names[int(probs[row].argmax())]
        escalated = probs[row].max() < task.routing.threshold
        points.append(
            DataPoint(
                text=train.texts[i],
                uid=f"{task.name}.bench{i}.sig",
                served_label=fm_label if escalated else served,
                specialist_label=served,
                foundation_label=fm_label if escalated else None,
                extra={"margin": float(top2[row, 1] - top2[row, 0]), "row": int(i)},
            )
        )
    return points


def label_model_probs(votes: np.ndarray, n_labels: int) -> np.ndarray:
    """Majority vote over the rules' and Python LFs' votes on the traffic (NaN: no vote)."""
    from protege.improver.labeling.label_model import fit_label_model

    fit = fit_label_model(votes, n_labels, kind="majority")
    probs = np.asarray(fit.model.predict_proba(votes), dtype=float)
    probs[~(votes != -1).any(axis=1)] = np.nan
    return probs


def run_task(name: str, setup: dict, seeds: int | None = None) -> dict:
    from protege import datasets
    from protege.improver.review.queue import cheap_votes, rank
    from protege.improver.training import TrainingSet, tfidf
    from protege.taskspec import DEFAULT_TASKS_FILE, load_tasks

    task = load_tasks(DEFAULT_TASKS_FILE)[name]
    train, test = datasets.load(name, "train"), datasets.load(name, "test")
    rows: list[dict] = []
    started = time.perf_counter()
    for seed in range(seeds or setup["seeds"]):
        rng = np.random.default_rng(seed)
        seeded = seed_rows(train.y, setup, rng)
        pool = np.setdiff1d(np.arange(len(train)), seeded)
        seed_texts = [train.texts[i] for i in seeded]
        seed_labels = [train.labels[i] for i in seeded]
        server = tfidf.fit(
            TrainingSet.from_gold(task.label_names, seed_texts, seed_labels), task.training
        )
        points = traffic_points(task, train, pool, server, setup["fm"])
        all_votes = cheap_votes(task)(points)  # once: the queue looks them up
        lm = label_model_probs(all_votes, len(task.label_names))
        at = {p.uid: j for j, p in enumerate(points)}

        def label_model(pts, lm=lm, at=at):
            return np.stack([lm[at[p.uid]] for p in pts])

        def votes(pts, all_votes=all_votes, at=at):
            return all_votes[[at[p.uid] for p in pts]]

        base = train_and_score(task, seed_texts, seed_labels, test)
        lf_texts, lf_labels = with_lfs(train, points, lm, [], task)
        lfs_base = train_and_score(task, seed_texts + lf_texts, seed_labels + lf_labels, test)
        for k in setup["k"]:
            queued = rank(
                task,
                points,
                limit=k,
                votes=votes,
                label_model=label_model,
                seed=seed,
            )
            chosen = {
                "queue": [q.point.extra["row"] for q in queued],
                "random": list(rng.choice(pool, size=k, replace=False)),
            }
            row = {"seed": seed, "k": k, "seed_only": base, "lfs_only": lfs_base}
            for how, picked in chosen.items():
                row[how] = train_and_score(
                    task,
                    seed_texts + [train.texts[i] for i in picked],
                    seed_labels + [train.labels[i] for i in picked],
                    test,
                )
                texts, labels = with_lfs(train, points, lm, list(picked), task)
                row[f"{how}_with_lfs"] = train_and_score(
                    task, seed_texts + texts, seed_labels + labels, test
                )
            reasons: dict[str, int] = {}
            for q in queued:
                for r in q.reasons:
                    reasons[r] = reasons.get(r, 0) + 1
            row["queue_reasons"] = reasons
            rows.append(row)
            print(
                f"{name} seed {seed} K={k}: alone random {row['random']:.3f} queue "
                f"{row['queue']:.3f} (seed set {base:.3f}); with LFs random "
                f"{row['random_with_lfs']:.3f} queue {row['queue_with_lfs']:.3f} (no reviews "
                f"{lfs_base:.3f})",
                flush=True,
            )
    summary = []
    for training in ("alone", "with_lfs"):
        suffix = "" if training == "alone" else "_with_lfs"
        for k in setup["k"]:
            at_k = [r for r in rows if r["k"] == k]
            queue, random_ = (np.array([r[h + suffix] for r in at_k]) for h in ("queue", "random"))
            summary.append(
                {
                    "training": training,
                    "k": k,
                    "random_mean": float(random_.mean()),
                    "random_sd": float(random_.std()),
                    "queue_mean": float(queue.mean()),
                    "queue_sd": float(queue.std()),
                    "gain_mean": float((queue - random_).mean()),
                    "queue_wins": int((queue > random_).sum()),
                    "runs": len(at_k),
                }
            )
    return {
        "task": name,
        "setup": setup,
        "train": len(train),
        "test": len(test),
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "runs": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=None, help="default: each task's own")
    parser.add_argument("--tasks", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    args = parser.parse_args()
    start = machine()
    results = {name: run_task(name, SETUPS[name], args.seeds) for name in args.tasks}
    print("\n| task | trained on | K reviews | random | queue | gain (points) | queue wins |")
    print("|---|---|---|---|---|---|---|")
    for name, result in results.items():
        for s in result["summary"]:
            print(
                f"| {name} | {s['training'].replace('_', ' ')} | {s['k']} "
                f"| {100 * s['random_mean']:.1f} ± {100 * s['random_sd']:.1f} "
                f"| {100 * s['queue_mean']:.1f} ± {100 * s['queue_sd']:.1f} "
                f"| {100 * s['gain_mean']:+.1f} | {s['queue_wins']}/{s['runs']} |"
            )
    path = write_results(
        "review_queue",
        {
            "machine": machine() | {"load_average_at_start": start["load_average_1_5_15"]},
            "tasks": results,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
