"""LoRA fine-tuning of the transformers FM on soft labels.

The loss is the soft cross-entropy between each text's target distribution (the label
model's probabilistic label, or a gold one-hot) and the FM's label distribution computed
exactly as scoring computes it (`label_loglik_tensor` over the task's prompt and label
words, `scoring.label_log_probabilities`): the adapter learns to answer the question it
will be asked when serving. Only q_proj/v_proj's low-rank factors train (~0.5 M weights
at rank 8), so a CPU job of a few dozen steps moves the FM measurably."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protege.foundation.prompts import render_prompt
from protege.foundation.scoring import label_log_probabilities
from protege.foundation.transformers_backend import TransformersBackend
from protege.taskspec import LoraSpec, TaskSpec

TARGET_MODULES = ("q_proj", "v_proj")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # not PEFT's README


@dataclass(frozen=True)
class TrainedAdapter:
    """PEFT's files (name -> bytes) and how training went."""

    files: dict[str, bytes]
    losses: list[float]  # each step's batch loss
    examples: int  # texts seen, counting repeats
    seconds: float

    @property
    def seconds_per_1k(self) -> float:
        return 1000.0 * self.seconds / max(self.examples, 1)


def soft_cross_entropy(
    log_probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The weighted mean over rows of -sum_c target_c log p_c."""
    return (-(targets * log_probs).sum(dim=1) * weights).sum() / weights.sum()


def train_adapter(
    backend: TransformersBackend,
    task: TaskSpec,
    texts: Sequence[str],
    targets: np.ndarray,
    weights: np.ndarray | None = None,
    spec: LoraSpec | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
) -> TrainedAdapter:
    """Train a LoRA adapter of `backend`'s model on `texts` with [N, C] `targets` (rows
    in the task's label order) and returns its files; the backend is left as it was.

    Batches walk seeded permutations of the rows, `spec.steps` of `spec.batch_size`."""
    from peft import LoraConfig
    from tqdm.auto import tqdm

    spec = spec or LoraSpec()
    if len(texts) != len(targets) or not len(texts):
        raise ValueError(f"{len(texts)} texts for {len(targets)} target rows")
    torch.manual_seed(seed)
    order = _batches(len(texts), spec.batch_size, spec.steps, seed)
    prefixes = [render_prompt(task, t) for t in texts]
    label_ids = backend.label_tokens(task)
    counts = torch.tensor([len(ids) for ids in label_ids], dtype=torch.float32)
    target_t = torch.as_tensor(np.asarray(targets), dtype=torch.float32)
    weight_t = torch.as_tensor(
        np.ones(len(texts)) if weights is None else np.asarray(weights), dtype=torch.float32
    )
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=2 * spec.rank,
        lora_dropout=0.0,
        target_modules=list(TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    losses: list[float] = []
    start = time.perf_counter()
    with backend.new_adapter(config) as adapter:
        optimizer = torch.optim.AdamW(adapter.parameters, lr=spec.lr)
        bar = tqdm(order, desc=f"{task.name}: LoRA", disable=not progress, leave=False)
        for rows in bar:
            loglik = backend.label_loglik_tensor([prefixes[i] for i in rows], label_ids)
            log_probs = label_log_probabilities(loglik, counts, task.prompt.length_normalize)
            loss = soft_cross_entropy(log_probs, target_t[rows], weight_t[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory(prefix="protege-lora-") as tmp:
            adapter.save(Path(tmp))
            files = {name: (Path(tmp) / name).read_bytes() for name in ADAPTER_FILES}
    return TrainedAdapter(files, losses, sum(len(r) for r in order), seconds)


def _batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """`steps` batches over seeded permutations of range(n), a new one each pass."""
    rng = np.random.default_rng(seed)
    size = min(batch_size, n)
    rows: list[int] = []
    while len(rows) < steps * size:
        rows += rng.permutation(n).tolist()
    return [rows[k * size : (k + 1) * size] for k in range(steps)]
