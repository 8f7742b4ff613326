"""all-MiniLM-L6-v2 tuned SetFit-style (Tunstall et al., 2022): the encoder is first
trained contrastively on pairs of texts — same label: cosine similarity pulled to 1,
different labels: pushed to 0 — then a linear head is fitted on its frozen embeddings,
as the `minilm` family fits its own.

Why beside `minilm-ft`. End-to-end fine-tuning learns from each text once per epoch;
the contrastive stage learns from pairs, so a few reviews per label go further (the
SetFit paper's few-shot regime). `bench/families.py` measures both on the same labels.

Pairs come from each row's label (its argmax: a review, or the label model's choice),
each weighted by the lower of its two rows' weights and confidences, so that a pair of
unsure weak labels moves the encoder less than a pair of reviews. Each text appears in
`setfit_pairs_per_text` pairs (capped at `setfit_max_pairs`), half with its own label,
half with another. The export is `minilm`'s: one ONNX graph, `tokenizer.json` alongside.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from protege.artifact import SpecialistFiles
from protege.encoder import encode
from protege.improver.training import minilm
from protege.improver.training.dataset import TrainingSet
from protege.improver.training.minilm_ft import MAX_GRAD_NORM, WARMUP_FRACTION
from protege.taskspec import TrainingSpec

NAME = "minilm-l6-setfit"


def pairs(
    labels: np.ndarray, per_text: int, max_pairs: int, rng: np.random.Generator
) -> np.ndarray:
    """[P, 3] rows (i, j, same): for each text, `per_text` partners, half of its own
    label and half of another where both exist; at most `max_pairs`, seeded."""
    by_label = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    out: list[tuple[int, int, int]] = []
    for i, c in enumerate(labels):
        same, other = by_label[c], np.flatnonzero(labels != c)
        for k in range(per_text):
            want_same = k % 2 == 0 and len(same) > 1 or not len(other)
            pool = same if want_same else other
            j = int(pool[rng.integers(len(pool))])
            if j != i:
                out.append((i, j, int(want_same)))
    rows = np.array(out, dtype=np.int64).reshape(-1, 3)
    return rows[rng.permutation(len(rows))[:max_pairs]]


def contrastive_tune(data: TrainingSet, spec: TrainingSpec, progress: bool = True) -> nn.Module:
    """The encoder after the contrastive stage, on the CPU in eval mode (the process's
    frozen encoder is copied, never changed)."""
    from tqdm.auto import tqdm

    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    device = minilm.device_for(spec)
    frozen, tokenizer = minilm.load_encoder()
    encoder = copy.deepcopy(frozen).to(device).train().requires_grad_(True)
    labels = data.targets.argmax(axis=1)
    trust = data.targets.max(axis=1) * data.weights / data.weights.max()
    todo = pairs(labels, spec.setfit_pairs_per_text, spec.setfit_max_pairs, rng)
    batch = spec.finetune_batch_size
    total = -(-len(todo) // batch)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=spec.finetune_lr)
    warmup = max(1, round(WARMUP_FRACTION * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, max(0.0, (total - step) / (total - warmup + 1))),
    )
    bar = tqdm(total=total, desc=f"{NAME}: contrastive", disable=not progress, leave=False)
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        texts = [data.texts[i] for i in chunk[:, 0]] + [data.texts[j] for j in chunk[:, 1]]
        encoded = tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.long, device=device)
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.long, device=device)
        pooled = minilm.mean_pool(
            encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask
        )
        left, right = pooled[: len(chunk)], pooled[len(chunk) :]
        cosine = nn.functional.cosine_similarity(left, right, dim=-1)
        target = torch.from_numpy(chunk[:, 2]).to(device, torch.float32)
        weight = torch.from_numpy(np.minimum(trust[chunk[:, 0]], trust[chunk[:, 1]])).to(
            device, torch.float32
        )
        loss = (weight * (cosine - target) ** 2).sum() / weight.sum().clamp(min=1e-6)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(encoder.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        schedule.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return encoder.cpu().eval().requires_grad_(False)


def with_head(
    encoder: nn.Module, data: TrainingSet, spec: TrainingSpec, progress: bool = True
) -> SpecialistFiles:
    """`minilm`'s head on the tuned encoder's embeddings; one ONNX graph with
    `tokenizer.json` alongside."""
    embeddings = encode(data.texts, encoder=encoder, progress=progress, desc=f"{NAME}: encode")
    c = spec.minilm_c or minilm.choose_c(embeddings, data, spec, torch.device("cpu"))
    head = minilm.fit_head(embeddings, data.targets, data.weights, spec, c=c, progress=progress)
    params = {
        "setfit_pairs_per_text": spec.setfit_pairs_per_text,
        "setfit_max_pairs": spec.setfit_max_pairs,
        "finetune_batch_size": spec.finetune_batch_size,
        "finetune_lr": spec.finetune_lr,
        "minilm_c": c,
    }
    return minilm.export(minilm.MiniLMClassifier(encoder, head).eval(), NAME, params)


def train(data: TrainingSet, spec: TrainingSpec, progress: bool = True) -> SpecialistFiles:
    """The contrastive stage, then the head."""
    return with_head(contrastive_tune(data, spec, progress), data, spec, progress)
