"""all-MiniLM-L6-v2 fine-tuned end to end: mean pooling + a linear head, the encoder's
weights trained too (the `minilm` family keeps them frozen).

LP-FT (Kumar et al., 2022): the head first comes from `minilm`'s frozen-feature fit
(linear probing), then encoder and head train together with AdamW on the same
weighted soft-label cross-entropy (the label model's probabilities, the reviews
one-hot), the encoder at a small learning rate and the head at a larger one. Starting
from a fitted head keeps early gradients from scrambling the pretrained features.

On CPU the batches are length-bucketed (texts of similar length share a batch, so
little padding is computed) and the batches' order is shuffled, seeded. The export is
`minilm`'s: one ONNX graph, encoder + pooling + head + softmax, `tokenizer.json` alongside,
so serving cannot tell the two families apart.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from protege.artifact import SpecialistFiles
from protege.improver.training import minilm
from protege.improver.training.dataset import TrainingSet
from protege.taskspec import TrainingSpec

NAME = "minilm-l6-ft"
# Batches are cut from runs of this many batches' rows sorted by length: similar lengths
# per batch, yet some mixing between epochs.
BUCKET_BATCHES = 50
WARMUP_FRACTION = 0.1  # linear warm-up, then linear decay to 0 (BERT's schedule)
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


def batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches of row indices: shuffled, sorted by length within buckets of
    `BUCKET_BATCHES` batches, cut, and the batches shuffled."""
    order = rng.permutation(len(lengths))
    bucket = batch_size * BUCKET_BATCHES
    out: list[np.ndarray] = []
    for start in range(0, len(order), bucket):
        rows = order[start : start + bucket]
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        out += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def linear_probe(data: TrainingSet, spec: TrainingSpec, device, progress: bool) -> nn.Linear:
    """The frozen-feature head, exactly as the `minilm` family fits it (C cross-validated)."""
    embeddings = minilm.encode(data.texts, device=device, progress=progress)
    c = spec.minilm_c or minilm.choose_c(embeddings, data, spec, device)
    return minilm.fit_head(
        embeddings, data.targets, data.weights, spec, c=c, device=device, progress=progress
    )


def fine_tune(
    data: TrainingSet, spec: TrainingSpec, progress: bool = True
) -> minilm.MiniLMClassifier:
    """LP-FT on `data`; the trained classifier on the CPU, in eval mode. The process's
    frozen encoder (`minilm.load_encoder`) is copied, never changed."""
    from tqdm.auto import tqdm

    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    device = minilm.device_for(spec)
    head = linear_probe(data, spec, device, progress).to(device)
    frozen, tokenizer = minilm.load_encoder()
    encoder = copy.deepcopy(frozen).to(device).train()
    encoder.requires_grad_(True)
    head.requires_grad_(True)

    lengths = np.array([sum(e.attention_mask) for e in tokenizer.encode_batch(data.texts)])
    targets = torch.from_numpy(data.targets).to(device)
    weights = torch.from_numpy(data.weights / data.weights.mean()).to(device)
    steps_per_epoch = -(-len(data) // spec.finetune_batch_size)
    total = steps_per_epoch * spec.finetune_epochs
    no_decay = [p for n, p in encoder.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [
        p for n, p in encoder.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "lr": spec.finetune_lr, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "lr": spec.finetune_lr, "weight_decay": 0.0},
            {"params": head.parameters(), "lr": spec.finetune_head_lr, "weight_decay": 0.0},
        ]
    )
    warmup = max(1, round(WARMUP_FRACTION * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, max(0.0, (total - step) / (total - warmup + 1))),
    )
    bar = tqdm(total=total, desc=f"{NAME}: fine-tune", disable=not progress, leave=False)
    for _ in range(spec.finetune_epochs):
        for rows in batches(lengths, spec.finetune_batch_size, rng):
            encoded = tokenizer.encode_batch([data.texts[i] for i in rows])
            ids = torch.tensor([e.ids for e in encoded], dtype=torch.long, device=device)
            mask = torch.tensor(
                [e.attention_mask for e in encoded], dtype=torch.long, device=device
            )
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            log_probs = torch.log_softmax(head(minilm.mean_pool(hidden, mask)), dim=-1)
            index = torch.from_numpy(rows).to(device)
            loss = -(weights[index] * (targets[index] * log_probs).sum(dim=-1)).mean()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_([*encoder.parameters(), *head.parameters()], MAX_GRAD_NORM)
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return minilm.MiniLMClassifier(encoder.cpu(), head.cpu()).eval().requires_grad_(False)


def export(model: minilm.MiniLMClassifier, spec: TrainingSpec) -> SpecialistFiles:
    """`minilm`'s artifact (one ONNX graph + `tokenizer.json`) under this family's name."""
    params = {
        "finetune_epochs": spec.finetune_epochs,
        "finetune_batch_size": spec.finetune_batch_size,
        "finetune_lr": spec.finetune_lr,
        "finetune_head_lr": spec.finetune_head_lr,
    }
    return minilm.export(model, NAME, params)


def train(data: TrainingSet, spec: TrainingSpec, progress: bool = True) -> SpecialistFiles:
    """Fine-tune, export one ONNX graph with `tokenizer.json` alongside."""
    return export(fine_tune(data, spec, progress), spec)
