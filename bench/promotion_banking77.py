"""Promotion on banking77 (issue 5, acceptance 5): the specialist that the improver's
round trains from reviewer corrections on 10 % of train, next to the FM's zero-shot
accuracy on a sample of the same test split.

Why. Day 0 of a 77-intent task: no specialist, a weak FM, keyword rules for a few
dozen intents and reviewers who look at one prediction in ten. This is what one
retrain round (`protege.improver.cycle.run_cycle`: label model over the LFs and the
reviews, distillation, gate on the held-out gold, promotion in MLflow) makes of it.

How. Every train text is stored as a prediction event; a seeded 10 % are reviewed
(`analysis.simulate_reviews`: a thumbs-up when the served label was right, which a
day-0 FM gets ~60 % of the time, else a correction with the true label). One round
runs on a private store and MLflow under a temporary home; the promoted specialist
is scored on all of banking77 test, the CPU FM (SmolLM2-135M, ~5 s a text for 77
labels) on a seeded sample of it.

    python bench/promotion_banking77.py          # ~6 CPU-minutes; far longer on a shared box
    python bench/promotion_banking77.py --fm-sample 8 --fm-exam 0   # a quick check
    python bench/promotion_banking77.py --families tfidf minilm     # MiniLM too (slow on CPU)
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

TASK = "banking77"


def store_traffic(store, task, texts, labels, review_share: float, seed: int) -> int:
    """Train texts as prediction events, `review_share` of them reviewed; returns how many."""
    from protege.improver.analysis import simulate_reviews
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
        pid = f"{TASK}.bench{i}.sig"
        events.append(PredictionEvent(
            prediction_id=pid, task=TASK, text=text, label=served,
            probabilities=[LabelProbability(label=served, probability=0.2)],
            route=Route.foundation, served_by=fm, latency_ms=0.0, timestamp=float(i)))
        if i in reviews:
            review = reviews[i][1][0]
            events.append(FeedbackEvent(
                prediction_id=pid, task=TASK, verdict=Verdict(review.verdict),
                label=review.label, reviewer=review.reviewer, timestamp=float(i) + 0.5))
    for start in range(0, len(events), 2000):
        store.record_many(events[start:start + 2000])
    return len(reviews)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--review-share", type=float, default=0.1)
    parser.add_argument("--fm-sample", type=int, default=30,
                        help="test texts the FM scores zero-shot (~5 s each on CPU)")
    parser.add_argument("--fm-exam", type=int, default=12,
                        help="held-out gold texts the round may send to the FM (retrain.fm_eval_max)")
    parser.add_argument("--prompt-budget", type=int, default=0,
                        help="texts each prompt LF scores (retrain.prompt_lf_budget; 0: rules "
                             "and reviews only)")
    parser.add_argument("--families", nargs="+", default=["tfidf"], choices=["tfidf", "minilm"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from protege import datasets
    from protege.config import Settings
    from protege.foundation.backend import create_backend
    from protege.improver.cycle import run_cycle
    from protege.improver.store import ExampleStore
    from protege.registry import Registry, registered_name
    from protege.serving.specialist import Specialist

    home = args.home or Path(tempfile.mkdtemp(prefix="protege-bench-b77-"))
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home, improver_ray="never")
    base = settings.load_tasks()[TASK]
    task = base.model_copy(update={
        "training": base.training.model_copy(update={"families": args.families,
                                                     "seed": args.seed}),
        # The FM's exam answers are all this run pays for: calibrate on however many.
        "retrain": base.retrain.model_copy(update={
            "fm_eval_max": args.fm_exam, "prompt_lf_budget": args.prompt_budget,
            "fm_calibration_min": max(1, min(args.fm_exam, base.retrain.fm_calibration_min))}),
    })
    train, test = datasets.load(TASK, "train"), datasets.load(TASK, "test")
    store = ExampleStore.from_settings(settings)
    registry = Registry.from_settings(settings)
    reviewed = store_traffic(store, task, train.texts, train.labels, args.review_share,
                             args.seed)

    backend, fm_load_s = None, None
    if args.fm_exam or args.fm_sample or args.prompt_budget:
        started = time.perf_counter()
        backend = create_backend(settings)
        fm_load_s = time.perf_counter() - started
    result = run_cycle(task, store, registry, settings, trigger="bench",
                       backend=backend, use_ray=False, progress=False)
    if result.round is None:
        raise SystemExit(f"no candidate: {result.outcome}: {result.reasons}")
    folder = registry.download(TASK, version=result.version)
    specialist = Specialist(folder, test.label_names)
    probs = np.concatenate([specialist.predict_proba(test.texts[i:i + 512])
                            for i in range(0, len(test), 512)])
    specialist_accuracy = float((probs.argmax(1) == test.y).mean())
    on_sample = None
    fm_accuracy, fm_s_per_text = None, None
    if args.fm_sample and backend is not None:
        rows = np.sort(np.random.default_rng(args.seed + 11).choice(len(test), args.fm_sample,
                                                                     replace=False))
        started = time.perf_counter()
        fm_probs = np.asarray(backend.predict_proba(task, [test.texts[i] for i in rows]))
        fm_s_per_text = (time.perf_counter() - started) / len(rows)
        fm_accuracy = float((fm_probs.argmax(1) == test.y[rows]).mean())
        on_sample = float((probs[rows].argmax(1) == test.y[rows]).mean())

    metrics = {k: (m.to_dict() if m else None) for k, m in result.round.metrics.items()}
    run = registry.client.get_run(
        registry.client.get_model_version(registered_name(TASK), result.version).run_id)
    payload = {
        "machine": machine(),
        "task": TASK, "train_texts": len(train), "reviewed": reviewed,
        "review_share": args.review_share, "families": args.families,
        "prompt_lf_budget": args.prompt_budget,
        "round": {"outcome": result.outcome, "version": result.version,
                  "seconds": result.seconds, "data": result.data,
                  "foundation_answers_on_exam": result.foundation,
                  "label_model": run.data.params.get("label_model"),
                  "chosen_family": result.round.candidate.family,
                  "threshold": result.round.calibration.threshold
                  if result.round.calibration else None,
                  "exam_metrics": metrics},
        "specialist_test_accuracy": specialist_accuracy,
        "specialist_test_n": len(test),
        "fm_zero_shot_accuracy_on_sample": fm_accuracy,
        "specialist_accuracy_on_the_same_sample": on_sample,
        "fm_sample_n": args.fm_sample if fm_accuracy is not None else 0,
        "fm_seconds_per_text": fm_s_per_text,
        "fm_load_seconds": fm_load_s,
    }
    path = write_results("promotion_banking77", payload)
    print(result.round.table())
    fm_line = (f"FM zero-shot {fm_accuracy:.1%} on {args.fm_sample} test texts "
               f"(specialist {on_sample:.1%} on the same)" if fm_accuracy is not None
               else "FM not scored")
    print(f"\nbanking77, reviews on {args.review_share:.0%} of train ({reviewed} texts): "
          f"specialist ({result.round.candidate.family}, version {result.version}, "
          f"{result.outcome}) {specialist_accuracy:.1%} on all {len(test)} test texts; "
          f"{fm_line}.\nresults: {path}")


if __name__ == "__main__":
    main()
