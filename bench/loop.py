"""The improvement loop's speed: how soon the first specialist takes over, and what
training costs per 1,000 examples for each specialist family.

Why. The loop pays off only if a usable specialist arrives early (on day 0 every
request goes to the slow FM) and rounds are cheap enough to run often.

How. (1) `make run`'s demo, in this process, with its defaults (`DemoOptions()`):
a fresh broker, Serve app and improver in a temporary run folder; the youtube-spam
train split replayed by 4 clients, reviewers answering 30 % of predictions (5 %
wrongly), a round every 50 feedback events. It reports the time from the replay's
start to the first promotion, the requests and feedback it took, and each phase's
accuracy against gold, FM share and p50 latency (day 0 vs after the last promotion,
as ratios). (2) `protege.improver.training.distill.benchmark_training()`: fit + ONNX
export of each family on 1,000 gold texts of youtube-spam and of banking77 (MiniLM's
encoder loaded before the clock starts), as seconds per 1,000 examples and the
MiniLM / TF-IDF ratio.

    python bench/loop.py                 # ~5 minutes on 2 cores
    python bench/loop.py --no-demo       # training times only (~1 minute)
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, ratio, write_results

TRAINING_TASKS = ("youtube-spam", "banking77")
FAMILIES = ("tfidf", "minilm")


def demo_figures(max_minutes: float) -> dict:
    """One demo run with `make run`'s options; its record's figures."""
    from rich.console import Console

    from protege.demo.options import DemoOptions
    from protege.demo.runner import run_demo

    with tempfile.TemporaryDirectory(prefix="protege-bench-loop-") as tmp:
        options = DemoOptions(out=Path(tmp) / "run", max_minutes=max_minutes)
        # The live display is for terminals; here only the final summary is kept.
        console = Console(file=io.StringIO(), width=120)
        result = run_demo(options, console=console)
        record = result.record
        totals = record.totals()
        outcomes, decisions = record.snapshot()
        first = totals["first_promotion_s"]
        phases = record.phases()
        day0, last = phases[0], phases[-1]
        return {
            "options": {k: str(v) for k, v in options.__dict__.items() if k != "out"},
            "wall_s": result.wall_s,
            "interrupted": result.interrupted,
            "first_promotion_s": first,
            "requests_before_first_promotion": (
                sum(o.t < first for o in outcomes) if first is not None else None
            ),
            "reviewed_before_first_promotion": (
                sum(o.reviewed and o.t < first for o in outcomes) if first is not None else None
            ),
            "decisions": [
                {"t": d.t, "action": d.action, "version": d.version, "accuracy": d.accuracy}
                for d in decisions
            ],
            "totals": totals,
            "phases": [p.__dict__ for p in phases],
            "day0_vs_last": {
                "accuracy": (day0.accuracy, last.accuracy),
                "fm_share": (day0.fm_share, last.fm_share),
                "p50_latency_ms": (day0.p50_latency_ms, last.p50_latency_ms),
                "latency_ratio": ratio(last.p50_latency_ms, day0.p50_latency_ms),
            },
            "summary_text": console.file.getvalue()[-4000:],
        }


def training_figures(examples: int) -> dict:
    from protege.improver.training.distill import benchmark_training

    out: dict = {}
    for task in TRAINING_TASKS:
        timings = benchmark_training(task, examples=examples, families=FAMILIES)
        per_1k = {t.family: t.seconds_per_1k for t in timings}
        out[task] = {
            "examples": examples,
            "seconds_per_1k": per_1k,
            "minilm_over_tfidf": ratio(per_1k["minilm"], per_1k["tfidf"]),
        }
        print(
            f"training on {examples} {task} texts: "
            + ", ".join(f"{f} {s:.1f} s per 1,000" for f, s in per_1k.items())
            + f" (MiniLM / TF-IDF ×{out[task]['minilm_over_tfidf']:.1f})",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-demo", action="store_true", help="skip the demo run")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=6.0,
        help="the demo's replay stops sending after this long",
    )
    parser.add_argument(
        "--examples", type=int, default=1000, help="gold texts each family trains on"
    )
    args = parser.parse_args()
    start_machine = machine()
    started = time.perf_counter()
    payload: dict = {"machine": start_machine}
    payload["training"] = training_figures(args.examples)
    if not args.no_demo:
        demo = demo_figures(args.max_minutes)
        payload["demo"] = demo
        print(demo["summary_text"])
        first = demo["first_promotion_s"]
        (acc0, acc1), (fm0, fm1) = (
            demo["day0_vs_last"]["accuracy"],
            demo["day0_vs_last"]["fm_share"],
        )
        if first is None:
            print("demo: no promotion before the replay ended", flush=True)
        else:
            print(
                f"demo ({demo['options']['task']}): first promotion {first:.0f} s into the "
                f"replay, after {demo['requests_before_first_promotion']} requests "
                f"({demo['reviewed_before_first_promotion']} reviewed); accuracy vs gold "
                f"{acc0:.1%} -> {acc1:.1%}, FM share {fm0:.1%} -> {fm1:.1%}, p50 latency "
                f"×{demo['day0_vs_last']['latency_ratio']:.3f}; whole run "
                f"{demo['wall_s']:.0f} s",
                flush=True,
            )
    payload["seconds"] = time.perf_counter() - started
    payload["machine"] = machine() | {"load_average_at_start": start_machine["load_average_1_5_15"]}
    print(f"results: {write_results('loop', payload)}")


if __name__ == "__main__":
    main()
