"""The foundation model with and without a LoRA adapter: SmolLM2-135M zero-shot against
SmolLM2-135M + an adapter trained by `protege.foundation.lora.train_adapter` (what the
`lora` family runs in a training job) on the same task's labelled train texts.

Why. The `lora` family is the loop's other way out of the last mile: teach the FM
itself rather than distil it. This measures what an adapter buys on CPU with a small
budget, what it costs to train, how big it is beside its base model, and what serving
through it costs (texts/s with and without it, timed call by call in alternation so
both see the same load).

How, per task: `--steps` AdamW steps of 8 seeded random train texts with their gold
labels (one-hot targets; rank 8 on q_proj/v_proj, the `training.lora` defaults), then
test accuracy on the test split (youtube all 250; banking77 a seeded sample).

    PYTHONPATH=services .venv/bin/python bench/fm_lora.py            # ~20 min on 2 cores
    PYTHONPATH=services .venv/bin/python bench/fm_lora.py --tasks youtube-spam
    PYTHONPATH=services .venv/bin/python bench/fm_lora.py --tasks banking77 --steps 8 --test-texts 77
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, ratio, write_results

STEPS = {"youtube-spam": 60, "banking77": 40}
TEST_TEXTS = {"youtube-spam": 250, "banking77": 154}
TIMING_TEXTS = 32


def accuracy(backend, task, texts: list[str], y: np.ndarray, adapter=None) -> float:
    probs = backend.predict_proba(task, texts, adapter=adapter)
    return float(np.mean(probs.argmax(axis=1) == y))


def texts_per_s(backend, task, texts: list[str], adapter) -> dict[str, float]:
    """texts/s of the base model and of the adapter, batches alternating between them."""
    spent = {"base": 0.0, "adapter": 0.0}
    for start in range(0, len(texts), backend.max_batch):
        batch = texts[start : start + backend.max_batch]
        for name, chosen in (("base", None), ("adapter", adapter)):
            began = time.perf_counter()
            backend.predict_proba(task, batch, adapter=chosen)
            spent[name] += time.perf_counter() - began
    return {name: round(len(texts) / s, 3) for name, s in spent.items()}


def run_task(backend, task, steps: int, test_size: int, seed: int) -> dict:
    from protege import datasets
    from protege.artifact import ADAPTER_DIR
    from protege.foundation.backend import Adapter
    from protege.foundation.lora import train_adapter
    from protege.taskspec import LoraSpec

    rng = np.random.default_rng(seed)
    train, test = datasets.load(task.name, "train"), datasets.load(task.name, "test")
    spec = LoraSpec(steps=steps)
    rows = rng.permutation(len(train))[: steps * spec.batch_size]
    targets = np.eye(len(task.labels))[np.asarray(train.y)[rows]]
    held = np.sort(rng.permutation(len(test))[:test_size])
    texts, y = [test.texts[i] for i in held], np.asarray(test.y)[held]

    zero_shot = accuracy(backend, task, texts, y)
    trained = train_adapter(
        backend, task, [train.texts[i] for i in rows], targets, spec=spec, seed=seed, progress=True
    )
    folder = Path(tempfile.mkdtemp(prefix="protege-bench-lora-"))
    (folder / ADAPTER_DIR).mkdir()
    for name, data in trained.files.items():
        (folder / ADAPTER_DIR / name).write_bytes(data)
    adapter = Adapter(f"{task.name}@vbench", folder)
    tuned = accuracy(backend, task, texts, y, adapter)
    speed = texts_per_s(backend, task, texts[:TIMING_TEXTS], adapter)
    return {
        "train_examples": int(trained.examples),
        "steps": steps,
        "test_texts": len(texts),
        "zero_shot_accuracy": round(zero_shot, 4),
        "lora_accuracy": round(tuned, 4),
        "train_seconds": round(trained.seconds, 1),
        "train_seconds_per_1k": round(trained.seconds_per_1k, 1),
        "first_loss": round(trained.losses[0], 4),
        "last_loss": round(float(np.mean(trained.losses[-5:])), 4),
        "adapter_bytes": sum(len(d) for d in trained.files.values()),
        "texts_per_s": speed,
        "adapter_over_base_speed": ratio(speed["adapter"], speed["base"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--steps", type=int, help="override the per-task step budget")
    parser.add_argument("--test-texts", type=int, help="override the per-task test sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from protege.foundation.transformers_backend import TransformersBackend
    from protege.settings import Settings

    settings = Settings()
    tasks = settings.load_tasks()
    backend = TransformersBackend.from_settings(settings)
    base_file = Path(backend.model.name_or_path) / "model.safetensors"
    payload: dict = {"machine": machine(), "model": backend.ref.model, "tasks": {}}
    started = time.perf_counter()
    for name in args.tasks:
        figures = run_task(
            backend,
            tasks[name],
            args.steps or STEPS[name],
            args.test_texts or TEST_TEXTS[name],
            args.seed,
        )
        if base_file.exists():
            figures["adapter_over_base_size"] = round(
                figures["adapter_bytes"] / base_file.stat().st_size, 5
            )
        payload["tasks"][name] = figures
        print(f"{name}: {figures}", flush=True)
        write_results(f"fm_lora_{name}", {"machine": payload["machine"], name: figures})
    payload["wall_s"] = round(time.perf_counter() - started, 1)
    payload["machine_after"] = machine()
    stem = "fm_lora" if set(args.tasks) == set(STEPS) else "_".join(["fm_lora", *args.tasks])
    print(f"wrote {write_results(stem, payload)}")


if __name__ == "__main__":
    main()
