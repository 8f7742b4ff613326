"""The specialist families side by side: training cost and test accuracy on the same
labels.

Why. A fine-tuned encoder (`minilm-ft`) should beat the frozen one (`minilm`) and
TF-IDF on accuracy; the question is whether that is worth its training time on the
CPUs a round runs on.

How. `protege.improver.training.distill.benchmark_training(test=True)`: per task, the
same `--examples` (1,000) random train texts with their gold labels, each family
trained (fit + ONNX export; MiniLM's encoder loaded before the clock starts), timed in
wall and CPU seconds per 1,000 examples (CPU time moves less with other work on the
machine), and the exported model, loaded as serving loads it, scored
on the task's whole test split.

    python bench/families.py                       # both tasks: past 10 min on 2 cores
    python bench/families.py --tasks youtube-spam  # one task (what README quotes)
    python bench/families.py --tasks youtube-spam --families minilm minilm-setfit
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, ratio, write_results

TASKS = ("youtube-spam", "banking77")
FAMILIES = ("tfidf", "minilm", "minilm-ft", "minilm-setfit")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # One task by default: both pass the 10 minutes a benchmark may take on 2 cores.
    parser.add_argument("--tasks", nargs="+", default=["youtube-spam"], choices=TASKS)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--examples", type=int, default=1000, help="gold train texts per task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from protege.improver.training.distill import benchmark_training

    payload: dict = {"machine": machine(), "families": args.families, "tasks": {}}
    started = time.perf_counter()
    for task in args.tasks:
        timings = benchmark_training(
            task, examples=args.examples, families=args.families, seed=args.seed, test=True
        )
        figures = {
            t.family: {
                "seconds_per_1k": round(t.seconds_per_1k, 2),
                "cpu_seconds_per_1k": round(t.cpu_seconds_per_1k, 2),
                "test_accuracy": round(t.test_accuracy, 4),
            }
            for t in timings
        }
        base = figures.get("minilm", {}).get("seconds_per_1k")
        for family in figures:
            figures[family]["time_over_minilm"] = ratio(figures[family]["seconds_per_1k"], base)
        payload["tasks"][task] = {"examples": args.examples, "seed": args.seed, **figures}
        for family, f in figures.items():
            print(
                f"{task}, {args.examples} labels: {family:10s} {f['seconds_per_1k']:7.1f} s per "
                f"1,000 (×{f['time_over_minilm'] or 0:.1f} minilm; CPU {f['cpu_seconds_per_1k']:.0f} s), "
                f"test accuracy "
                f"{f['test_accuracy']:.1%}",
                flush=True,
            )
    payload["wall_s"] = round(time.perf_counter() - started, 1)
    payload["machine_after"] = machine()
    # A run of some tasks only keeps its own file: it does not overwrite the full run's.
    name = "families" if set(args.tasks) == set(TASKS) else "_".join(["families", *args.tasks])
    if set(args.families) != set(FAMILIES):  # nor does a run of some families
        name = "_".join([name, *args.families])
    print(f"wrote {write_results(name, payload)}")


if __name__ == "__main__":
    main()
