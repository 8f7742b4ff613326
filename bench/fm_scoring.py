"""FM label-scoring throughput: the transformers backend's texts/s on youtube-spam (2
one-token labels: one prompt pass) and banking77 (77 labels of 2-9 tokens: a prompt
pass plus a packed pass over the label tokens), fed as the FoundationModel
deployment feeds it (`fm_max_batch` texts per call) and one text per call.

Why. Scoring cost decides how many requests the FM can take and how long the
improver's exam takes; this isolates it from serving and the cascade
(bench/foundation.py). `--against REV` times the backend of another commit in the
same process, call by call in alternation, so that both see the same load:

    PYTHONPATH=services .venv/bin/python bench/fm_scoring.py --against 0b9ead3  # ~6 min
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, machine, write_results

BACKEND_PATH = "services/protege/foundation/transformers_backend.py"


def backend_at(rev: str):
    """The TransformersBackend class as committed at `rev`."""
    source = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "show", f"{rev}:{BACKEND_PATH}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="protege-bench-")) / f"backend_{rev}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TransformersBackend


def timed(backends: dict, task, texts: list[str], per_call: int) -> dict[str, float]:
    """texts/s of each backend, the calls alternating between them."""
    spent = dict.fromkeys(backends, 0.0)
    for start in range(0, len(texts), per_call):
        for name, backend in backends.items():
            started = time.perf_counter()
            backend.predict_proba(task, texts[start : start + per_call])
            spent[name] += time.perf_counter() - started
    return {name: round(len(texts) / s, 3) for name, s in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--youtube", type=int, default=64, help="youtube test texts timed")
    parser.add_argument("--banking", type=int, default=16, help="banking77 test texts timed")
    parser.add_argument("--against", help="also time the backend of this git revision")
    args = parser.parse_args()

    from protege import datasets
    from protege.foundation.transformers_backend import TransformersBackend
    from protege.settings import Settings

    context = {"machine_at_start": machine()}
    settings = Settings()
    tasks = settings.load_tasks()
    backends = {"current": TransformersBackend.from_settings(settings)}
    if args.against:
        backends[args.against] = backend_at(args.against).from_settings(settings)
    runs = {
        "youtube-spam": datasets.load("youtube-spam", "test").texts[: args.youtube],
        "banking77": datasets.load("banking77", "test").texts[: args.banking],
    }
    for backend in backends.values():  # warm-up (first-call allocations)
        backend.predict_proba(tasks["youtube-spam"], runs["youtube-spam"][:2])
    max_batch = backends["current"].max_batch
    figures = {}
    for name, texts in runs.items():
        task = tasks[name]
        probs = [b.predict_proba(task, texts[:2]) for b in backends.values()]
        figures[name] = {
            "labels": len(task.labels),
            "texts": len(texts),
            "texts_per_s_batched": timed(backends, task, texts, max_batch),
            "texts_per_s_single": timed(backends, task, texts[:4], 1),
            "max_abs_probability_difference": float(np.abs(probs[0] - probs[-1]).max()),
        }
        print(f"{name}: {figures[name]}", flush=True)
    context["machine_at_end"] = machine()
    path = write_results("fm_scoring", {**context, "max_batch": max_batch, "throughput": figures})
    print(
        f"load average {context['machine_at_start']['load_average_1_5_15']} at start, "
        f"{context['machine_at_end']['load_average_1_5_15']} at end; written to {path}"
    )


if __name__ == "__main__":
    main()
