"""FM label-scoring throughput: the transformers backend's texts/s on youtube-spam (2
one-token labels: one prompt pass) and banking77 (77 labels of 2-9 tokens: a prompt
pass plus packed label passes), fed as the FoundationModel deployment feeds it
(`fm_max_batch` texts per call) and one text per call.

Why. Scoring cost decides how many requests the FM can take and how long the
improver's exam takes; this isolates it from serving and the cascade
(bench/foundation.py). Run it on an older tree to compare implementations:

    PYTHONPATH=services .venv/bin/python bench/fm_scoring.py          # ~2 min on 2 cores
    PYTHONPATH=<old tree>/services .venv/bin/python bench/fm_scoring.py --no-write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results


def texts_per_s(backend, task, texts: list[str], per_call: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(texts), per_call):
        backend.predict_proba(task, texts[start : start + per_call])
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--youtube", type=int, default=64, help="youtube test texts timed")
    parser.add_argument("--banking", type=int, default=16, help="banking77 test texts timed")
    parser.add_argument("--no-write", action="store_true", help="print only (older trees)")
    args = parser.parse_args()

    from protege import datasets
    from protege.foundation.transformers_backend import TransformersBackend
    from protege.settings import Settings

    context = {"machine_at_start": machine()}
    settings = Settings()
    tasks = settings.load_tasks()
    backend = TransformersBackend.from_settings(settings)
    runs = {
        "youtube-spam": datasets.load("youtube-spam", "test").texts[: args.youtube],
        "banking77": datasets.load("banking77", "test").texts[: args.banking],
    }
    backend.predict_proba(tasks["youtube-spam"], runs["youtube-spam"][:2])  # warm-up
    figures = {}
    for name, texts in runs.items():
        task = tasks[name]
        figures[name] = {
            "labels": len(task.labels),
            "texts": len(texts),
            "texts_per_s_batched": round(texts_per_s(backend, task, texts, backend.max_batch), 3),
            "texts_per_s_single": round(texts_per_s(backend, task, texts[:4], 1), 3),
        }
        print(f"{name}: {figures[name]}", flush=True)
    context["machine_at_end"] = machine()
    print(
        f"load average {context['machine_at_start']['load_average_1_5_15']} at start, "
        f"{context['machine_at_end']['load_average_1_5_15']} at end"
    )
    if not args.no_write:
        path = write_results(
            "fm_scoring", {**context, "max_batch": backend.max_batch, "throughput": figures}
        )
        print(f"written to {path}")


if __name__ == "__main__":
    main()
