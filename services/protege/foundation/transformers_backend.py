"""Foundation model on CPU with transformers: each label scored by the log-likelihood
of its words after the task's prompt. The prompt is run once per text and its KV
cache is shared by all labels, so 77 labels cost one prompt pass plus one short
batched pass over the label tokens."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path

import numpy as np
import torch

from protege.foundation.prompts import continuations, render_prompt
from protege.foundation.scoring import label_probabilities
from protege.foundation.smollm import MODEL_NAME, converted_model_folder
from protege.schemas import ModelRef
from protege.settings import Settings
from protege.taskspec import PromptSpec, TaskSpec

# KV-cache rows x tokens held at once while scoring labels (~46 KB per token-row
# for SmolLM2-135M): bounds memory for 77 labels x long prompts to ~0.5 GB.
KV_BUDGET_TOKENS = 12_000


class TransformersBackend:
    def __init__(self, model_folder: Path, name: str, max_batch: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_folder)
        self.model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
        self.model.eval()
        self.ref = ModelRef(
            model=name, version=getattr(self.model.config, "_commit_hash", None) or "local"
        )
        self.max_batch = max_batch
        self._label_tokens: dict[tuple[str, ...], list[list[int]]] = {}
        self._lock = threading.Lock()  # one forward pass at a time per process
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @classmethod
    def from_settings(cls, settings: Settings) -> TransformersBackend:
        if settings.fm_threads:
            torch.set_num_threads(settings.fm_threads)
        folder = (
            Path(settings.fm_model)
            if settings.fm_model
            else converted_model_folder(settings.cache_dir)
        )
        name = folder.name if settings.fm_model else MODEL_NAME
        return cls(folder, name=name, max_batch=settings.fm_max_batch)

    def _tokens_of(self, words: list[str]) -> list[list[int]]:
        key = tuple(words)
        if key not in self._label_tokens:
            self._label_tokens[key] = [
                self.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words
            ]
        return self._label_tokens[key]

    def predict_proba(
        self, task: TaskSpec, texts: list[str], prompt: PromptSpec | None = None
    ) -> np.ndarray:
        prompt = prompt or task.prompt
        label_ids = self._tokens_of(continuations(task))
        counts = np.array([len(ids) for ids in label_ids], dtype=np.float32)
        rows = []
        for start in range(0, len(texts), self.max_batch):
            prefixes = [
                render_prompt(task, t, prompt) for t in texts[start : start + self.max_batch]
            ]
            with self._lock:
                rows.append(self.label_loglik(prefixes, label_ids))
        loglik = np.concatenate(rows) if rows else np.zeros((0, len(label_ids)), np.float32)
        return label_probabilities(loglik, counts, prompt.length_normalize)

    @torch.inference_mode()
    def label_loglik(self, prefixes: list[str], label_ids: list[list[int]]) -> np.ndarray:
        """[B, C] summed log-probs of each label's tokens after each prefix."""
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prefixes]
        prefix, prefix_mask = _left_padded(encoded, self._pad_id)
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=prefix, attention_mask=prefix_mask, position_ids=positions, use_cache=True
        )
        first_logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B, V]
        cache = _output_cache(out)
        # Repeating the prompt cache for every label costs memory in B*C*prefix_len:
        # score labels in chunks that keep it near KV_BUDGET_TOKENS.
        chunk = max(1, KV_BUDGET_TOKENS // (len(encoded) * prefix.shape[1]))
        prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]
        columns = []
        for start in range(0, len(label_ids), chunk):
            for layer, (keys, values) in zip(cache.layers, prompt_kv):
                layer.keys, layer.values = keys, values  # back to the prompt alone
            part = label_ids[start : start + chunk]
            columns.append(self._continuation_loglik(first_logp, cache, prefix_mask, part))
        return np.concatenate(columns, axis=1)

    @torch.inference_mode()
    def token_logprobs(self, text: str) -> tuple[list[str], list[float | None], list[int]]:
        """Each token of `text`, its log-prob given the tokens before it (None for the
        first) and its character offset: what an OpenAI `echo` completion reports."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        with self._lock:
            logits = self.model(input_ids=torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        values: list[float | None] = [None] + [
            float(logp[k - 1, ids[k]]) for k in range(1, len(ids))
        ]
        tokens = [self.tokenizer.decode([i]) for i in ids]
        return tokens, values, [start for start, _ in encoded["offset_mapping"]]

    def _continuation_loglik(self, first_logp, cache, prefix_mask, label_ids) -> np.ndarray:
        batch, n_labels = prefix_mask.shape[0], len(label_ids)
        labels, label_mask = _right_padded(label_ids, self._pad_id)
        first = first_logp[:, labels[:, 0]]  # [B, C]: log p(first label token | prefix)
        if labels.shape[1] == 1:
            return first.numpy()
        cache.batch_repeat_interleave(n_labels)  # every label continues every prefix
        inputs = labels.repeat(batch, 1)  # [B*C, L]
        mask = torch.cat(
            [prefix_mask.repeat_interleave(n_labels, 0), label_mask.repeat(batch, 1)], dim=1
        )
        start = prefix_mask.sum(-1).repeat_interleave(n_labels).unsqueeze(1)
        label_pos = start + torch.arange(labels.shape[1]).unsqueeze(0)
        logits = self.model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=label_pos,
            use_cache=False,
            **{_CACHE_KWARG: cache},
        ).logits
        logp = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)  # predicts tokens 1..L-1
        token_logp = logp.gather(-1, inputs[:, 1:].unsqueeze(-1)).squeeze(-1)
        token_logp = token_logp * label_mask[:, 1:].repeat(batch, 1)
        return (first + token_logp.sum(-1).view(batch, n_labels)).numpy()


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding, so that every prompt ends at the same position."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def _right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def _output_cache(out):
    """transformers 5.2x renamed `past_key_values` to `cache`; accept both."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _cache_kwarg() -> str:
    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    return (
        "cache"
        if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
        else "past_key_values"
    )


_CACHE_KWARG = _cache_kwarg()
