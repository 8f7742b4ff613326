"""Foundation-model benchmark: what the FM costs on CPU, and how much of it the
cascade saves.

Why. The FM is the expensive fallback; the point of the specialist is to keep
requests off it without losing accuracy. So this measures (1) the transformers
backend's texts/s on CPU for a 2-label task (youtube-spam) and a 77-label one
(banking77), scored the way the FoundationModel deployment scores them (batched,
the label log-likelihoods sharing the prompt's KV cache), and (2) on the youtube
test split, for each cascade threshold in a grid, the share of requests the
specialist answers alone (kept off the FM) and the cascade's accuracy, against
FM-only accuracy. The specialist is the project's TF-IDF family trained on youtube
train, built by the same code as the tests'. The headline is the largest share kept
off the FM at equal-or-better accuracy than FM-only.

    python bench/foundation.py                 # ~5 minutes on 2 cores
    python bench/foundation.py --youtube 32 --banking 4   # a quick check

Each FM run stops at a time budget (youtube 270 s, banking77 90 s by default) so
that the script ends in under 10 minutes even on a loaded machine; the JSON says
how many texts each figure rests on (all 250 youtube test texts on a quiet machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results, youtube_specialist

THRESHOLDS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.999, 1.01]


def timed_scores(
    backend,
    task,
    texts: list[str],
    budget_s: float = float("inf"),
    label: str = "",
    chunk: int | None = None,
) -> tuple[np.ndarray, float]:
    """[n, C] FM probabilities of the first n texts and the texts/s it took, scored in
    chunks until the next one would overrun `budget_s` (at least one chunk), so that the
    script ends in time even on a loaded machine; n says how far it got."""
    rows, started = [], time.perf_counter()
    chunk = chunk or backend.max_batch
    for start in range(0, len(texts), chunk):
        rows.append(np.asarray(backend.predict_proba(task, texts[start : start + chunk])))
        spent, done = time.perf_counter() - started, start + len(rows[-1])
        if label:
            print(f"  {label}: {done}/{len(texts)} texts in {spent:.0f} s", flush=True)
        if spent + spent / done * chunk > budget_s:  # the next chunk would overrun the budget
            break
    probs = np.concatenate(rows)
    return probs, len(probs) / (time.perf_counter() - started)


def cascade_table(spec_probs: np.ndarray, fm_probs: np.ndarray, truth: np.ndarray) -> list[dict]:
    """Per threshold: the specialist answers when its top probability reaches it, the FM
    otherwise (the router's cascade rule). Columns of both are the task's labels."""
    confidence = spec_probs.max(axis=1)
    spec_pred, fm_pred = spec_probs.argmax(axis=1), fm_probs.argmax(axis=1)
    rows = []
    for t in THRESHOLDS:
        kept = confidence >= t
        pred = np.where(kept, spec_pred, fm_pred)
        rows.append(
            {
                "threshold": t,
                "kept_off_fm": round(float(kept.mean()), 4),
                "accuracy": round(float((pred == truth).mean()), 4),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--youtube",
        type=int,
        default=0,
        help="youtube test texts scored by the FM (default 0: all 250)",
    )
    parser.add_argument(
        "--youtube-budget",
        type=float,
        default=270.0,
        help="seconds of FM scoring on youtube; past it the cascade uses the texts scored",
    )
    parser.add_argument(
        "--banking", type=int, default=16, help="banking77 test texts timed (77 labels each)"
    )
    parser.add_argument(
        "--banking-budget", type=float, default=90.0, help="seconds of FM scoring on banking77"
    )
    args = parser.parse_args()

    from protege import datasets
    from protege.artifact import Specialist
    from protege.foundation.transformers_backend import TransformersBackend
    from protege.settings import Settings

    t0 = time.monotonic()
    context = {"machine_at_start": machine()}
    print(
        f"load average at start: {context['machine_at_start']['load_average_1_5_15']}", flush=True
    )
    settings = Settings()
    tasks = settings.load_tasks()
    started = time.perf_counter()
    backend = TransformersBackend.from_settings(settings)
    load_s = time.perf_counter() - started
    print(
        f"FM {backend.ref.model} loaded in {load_s:.1f} s (batch {backend.max_batch})", flush=True
    )

    youtube, banking = tasks["youtube-spam"], tasks["banking77"]
    test = datasets.load("youtube-spam", "test")
    # A fixed shuffle, so that a sample cut short by the time budget is still representative.
    order = np.random.default_rng(0).permutation(len(test))[: args.youtube or len(test)]
    texts = [test.texts[i] for i in order]

    # Warm-up on two texts (first-call allocation), then the timed runs.
    backend.predict_proba(youtube, texts[:2])
    single = [timed_scores(backend, youtube, [t])[1] for t in texts[:3]]
    fm_probs, youtube_rate = timed_scores(
        backend, youtube, texts, args.youtube_budget, "youtube-spam"
    )
    n = len(fm_probs)
    texts = texts[:n]
    truth = np.array([youtube.label_index(test.labels[i]) for i in order[:n]])
    print(
        f"youtube-spam (2 labels): {youtube_rate:.2f} texts/s batched over {n} texts; "
        f"{np.mean(single):.2f} texts/s one at a time",
        flush=True,
    )
    bank = datasets.load("banking77", "test")
    rng = np.random.default_rng(0)
    rows = rng.choice(len(bank), size=args.banking, replace=False)
    bank_texts = [bank.texts[i] for i in rows]
    bank_probs, banking_rate = timed_scores(
        backend, banking, bank_texts, args.banking_budget, "banking77", chunk=1
    )  # 77 labels: ~5 s a text, so check the budget after each
    rows = rows[: len(bank_probs)]
    bank_acc = float(
        np.mean(
            [
                banking.label_names[j] == bank.labels[i]
                for i, j in zip(rows, bank_probs.argmax(axis=1))
            ]
        )
    )
    print(
        f"banking77 (77 labels): {banking_rate:.3f} texts/s over {len(rows)} texts "
        f"(accuracy on them {bank_acc:.2f})",
        flush=True,
    )

    folder = youtube_specialist(Path(tempfile.mkdtemp(prefix="protege-bench-")) / "specialist")
    specialist = Specialist(folder, expected_labels=youtube.label_names)
    started = time.perf_counter()
    spec_probs = specialist.predict_proba(texts)
    specialist_rate = len(texts) / (time.perf_counter() - started)
    table = cascade_table(spec_probs, fm_probs, truth)
    fm_accuracy = round(float((fm_probs.argmax(axis=1) == truth).mean()), 4)
    fit = [r for r in table if r["accuracy"] >= fm_accuracy]
    best = max(fit, key=lambda r: (r["kept_off_fm"], r["accuracy"]))
    configured = next((r for r in table if r["threshold"] == youtube.routing.threshold), None)

    print(
        f"\ncascade on youtube test ({n} texts): FM-only accuracy {fm_accuracy:.3f}; "
        f"specialist {specialist_rate:.0f} texts/s in one batch"
    )
    print("  threshold  kept off FM  accuracy")
    for r in table:
        mark = "  <- task's threshold" if r is configured else ""
        print(f"  {r['threshold']:>9}  {r['kept_off_fm']:>11.3f}  {r['accuracy']:>8.3f}{mark}")
    print(
        f"\nlargest share kept off the FM at >= FM-only accuracy: {best['kept_off_fm']:.3f} "
        f"(threshold {best['threshold']}, accuracy {best['accuracy']:.3f} vs FM-only {fm_accuracy:.3f}); "
        f"{round(n * (1 - best['kept_off_fm']))} of {n} texts reach the FM"
    )

    context["machine_at_end"] = machine()
    context["wall_s"] = round(time.monotonic() - t0, 1)
    path = write_results(
        "foundation",
        {
            **context,
            "fm": {
                "model": backend.ref.model,
                "load_s": round(load_s, 1),
                "max_batch": backend.max_batch,
            },
            "throughput": {
                "youtube-spam": {
                    "labels": 2,
                    "texts": n,
                    "texts_per_s_batched": round(youtube_rate, 3),
                    "texts_per_s_single": round(float(np.mean(single)), 3),
                },
                "banking77": {
                    "labels": 77,
                    "texts": len(rows),
                    "texts_per_s_batched": round(banking_rate, 4),
                    "accuracy_on_sample": round(bank_acc, 3),
                },
                "specialist_youtube_texts_per_s": round(specialist_rate, 1),
            },
            "cascade": {
                "task": "youtube-spam",
                "split": "test",
                "texts": n,
                "fm_only_accuracy": fm_accuracy,
                "specialist_only_accuracy": table[0]["accuracy"],
                "by_threshold": table,
                "best_at_fm_accuracy": best,
                "task_threshold": youtube.routing.threshold,
            },
        },
    )
    print(
        f"load average at end: {context['machine_at_end']['load_average_1_5_15']}; "
        f"{context['wall_s']} s; written to {path}"
    )


if __name__ == "__main__":
    main()
