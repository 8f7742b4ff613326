"""Foundation model on CPU with transformers: each label scored by the log-likelihood
of its words after the task's prompt, in as few forward passes as give exact scores.

The prompt pass's next-token distribution holds every label's first token, which is
a single-token label's whole score: tasks whose labels are all one token (youtube's
`ham`/`spam`) cost that one pass. Longer labels need their other tokens: all labels
of a text are packed into one extra pass over the prompt's KV cache, each label's
tokens seeing the prompt and their own earlier tokens only, so banking77's 77
labels cost one prompt pass plus one pass over ~190 label tokens.

LoRA adapters of the model (fm-adapter specialists) are loaded on demand into one PEFT
wrapper, the last `MAX_ADAPTERS` used kept; the base model answers with them switched
off, as before any was loaded (to float rounding). `label_loglik_tensor` is the differentiable
core that scoring and LoRA training (`foundation.lora`) share."""

from __future__ import annotations

import inspect
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protege.artifact import ADAPTER_DIR
from protege.foundation.backend import Adapter
from protege.foundation.prompts import continuations, render_prompt
from protege.foundation.scoring import label_probabilities
from protege.foundation.smollm import MODEL_NAME, converted_model_folder
from protege.schemas import ModelRef
from protege.settings import Settings
from protege.taskspec import PromptSpec, TaskSpec

# Label tokens scored in one packed pass, over all texts of a batch: their logits
# take 4 bytes x the vocabulary each (~200 KB for SmolLM2), so this bounds a pass to
# ~0.4 GB of logits and log-probs; more label tokens take more passes.
LABEL_TOKENS_PER_PASS = 1024
# Adapters kept loaded (each ~2 MB at rank 8 on q/v): the least recently used goes first.
MAX_ADAPTERS = 8
TRAINING_ADAPTER = "trainee"  # PEFT's name of the adapter `new_adapter` trains


@dataclass(frozen=True)
class TrainableAdapter:
    """A fresh adapter being trained in the backend's model: its parameters, and `save`
    (PEFT's `adapter_config.json` and `adapter_model.safetensors` into a folder)."""

    parameters: list[torch.nn.Parameter]
    peft_model: object

    def save(self, folder: Path) -> None:
        self.peft_model.save_pretrained(str(folder), selected_adapters=[TRAINING_ADAPTER])
        for path in (folder / TRAINING_ADAPTER).iterdir():  # PEFT nests non-default names
            path.replace(folder / path.name)
        (folder / TRAINING_ADAPTER).rmdir()


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
        self._peft = None  # the PEFT wrapper of `model`, once an adapter is used
        self._adapters: OrderedDict[str, str] = OrderedDict()  # name -> PEFT's name, LRU
        self._loads = itertools.count()
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

    def label_tokens(self, task: TaskSpec) -> list[list[int]]:
        """Each label's continuation tokens (`prompts.continuations`)."""
        return self._tokens_of(continuations(task))

    def _tokens_of(self, words: list[str]) -> list[list[int]]:
        key = tuple(words)
        if key not in self._label_tokens:
            self._label_tokens[key] = [
                self.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words
            ]
        return self._label_tokens[key]

    def predict_proba(
        self,
        task: TaskSpec,
        texts: list[str],
        prompt: PromptSpec | None = None,
        adapter: Adapter | None = None,
    ) -> np.ndarray:
        prompt = prompt or task.prompt
        label_ids = self.label_tokens(task)
        counts = np.array([len(ids) for ids in label_ids], dtype=np.float32)
        prefixes = [render_prompt(task, t, prompt) for t in texts]
        # Batches of similar length waste little on padding.
        order = sorted(range(len(texts)), key=lambda i: len(prefixes[i]))
        loglik = np.zeros((len(texts), len(label_ids)), np.float32)
        for start in range(0, len(order), self.max_batch):
            rows = order[start : start + self.max_batch]
            with self._lock, self._scoring_with(adapter):
                loglik[rows] = self.label_loglik([prefixes[i] for i in rows], label_ids)
        return label_probabilities(loglik, counts, prompt.length_normalize)

    @torch.inference_mode()
    def label_loglik(self, prefixes: list[str], label_ids: list[list[int]]) -> np.ndarray:
        """[B, C] summed log-probs of each label's tokens after each prefix."""
        return self.label_loglik_tensor(prefixes, label_ids).numpy()

    def label_loglik_tensor(self, prefixes: list[str], label_ids: list[list[int]]) -> torch.Tensor:
        """`label_loglik` as a tensor, differentiable outside inference mode: what LoRA
        training's loss is computed from, so that it trains exactly what scoring reads.
        The caller holds the lock (and picks the adapter)."""
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prefixes]
        prefix, prefix_mask = _left_padded(encoded, self._pad_id)
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        single_tokens = all(len(ids) == 1 for ids in label_ids)
        out = self.model(
            input_ids=prefix,
            attention_mask=prefix_mask,
            position_ids=positions,
            use_cache=not single_tokens,
            logits_to_keep=1,  # the next token's only: the vocabulary x every position is waste
        )
        first_logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B, V]
        first = first_logp[:, [ids[0] for ids in label_ids]]  # [B, C]
        if single_tokens:  # the next-token distribution holds every whole label
            return first
        return first + self._rest_loglik(_output_cache(out), prefix_mask, label_ids)

    def token_logprobs(
        self, text: str, adapter: Adapter | None = None
    ) -> tuple[list[str], list[float | None], list[int]]:
        """Each token of `text`, its log-prob given the tokens before it (None for the
        first) and its character offset: what an OpenAI `echo` completion reports, by the
        base model or `adapter` (the server's adapter models)."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        # Inference mode after the adapter is loaded: PEFT cannot load inference tensors.
        with self._lock, self._scoring_with(adapter), torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
        values: list[float | None] = [None] + [
            float(logp[k - 1, ids[k]]) for k in range(1, len(ids))
        ]
        tokens = [self.tokenizer.decode([i]) for i in ids]
        return tokens, values, [start for start, _ in encoded["offset_mapping"]]

    @contextmanager
    def _scoring_with(self, adapter: Adapter | None) -> Iterator[None]:
        """The model answering as `adapter` (None: the base model) for the block; the
        caller holds the lock."""
        if adapter is None:
            with self._peft.disable_adapter() if self._peft is not None else nullcontext():
                yield
            return
        key = self._loaded(adapter)  # creates the wrapper the first time
        self._peft.set_adapter(key)
        yield

    def _loaded(self, adapter: Adapter) -> str:
        """PEFT's name of `adapter`, loading its weights from its folder the first time
        (and dropping the least recently used beyond `MAX_ADAPTERS`)."""
        if adapter.name in self._adapters:
            self._adapters.move_to_end(adapter.name)
            return self._adapters[adapter.name]
        if adapter.folder is None:
            raise ValueError(f"adapter {adapter.name!r}: the transformers backend needs its folder")
        from peft import PeftModel

        key = f"adapter{next(self._loads)}"  # served names hold dots; PEFT's may not
        path = str(Path(adapter.folder) / ADAPTER_DIR)
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.model, path, adapter_name=key)
        else:
            self._peft.load_adapter(path, adapter_name=key)
        self._adapters[adapter.name] = key
        while len(self._adapters) > MAX_ADAPTERS:
            _, old = self._adapters.popitem(last=False)
            self._drop(old)
        return key

    def forget(self, name: str) -> None:
        """Unload the adapter served as `name`, if loaded: its folder's weights changed."""
        with self._lock:
            key = self._adapters.pop(name, None)
            if key is not None:
                self._drop(key)

    def _drop(self, key: str) -> None:
        """Delete one adapter; the last one takes the wrapper off, back to the plain model."""
        if len(self._peft.peft_config) > 1:
            self._peft.delete_adapter(key)
        else:
            self._peft.unload()
            self._peft = None

    @contextmanager
    def new_adapter(self, config) -> Iterator[TrainableAdapter]:
        """A fresh LoRA adapter (a peft `LoraConfig`), active and trainable for the block,
        under the lock; removed afterwards, leaving the model as it was."""
        from peft import get_peft_model

        with self._lock:
            if self._peft is None:
                self._peft = get_peft_model(self.model, config, adapter_name=TRAINING_ADAPTER)
            else:
                self._peft.add_adapter(TRAINING_ADAPTER, config)
            self._peft.set_adapter(TRAINING_ADAPTER)
            parameters = []
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad = f".{TRAINING_ADAPTER}." in name
                if parameter.requires_grad:
                    parameters.append(parameter)
            try:
                yield TrainableAdapter(parameters, self._peft)
            finally:
                self._drop(TRAINING_ADAPTER)
                for parameter in self.model.parameters():
                    parameter.requires_grad = False

    def _rest_loglik(self, cache, prefix_mask, label_ids) -> torch.Tensor:
        """[B, C] summed log-probs of each label's tokens after its first, from packed
        passes over the prompt's cache (zero for one-token labels)."""
        batch = prefix_mask.shape[0]
        prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]
        rest = torch.zeros((batch, len(label_ids)))
        for group in _label_groups(label_ids, max(1, LABEL_TOKENS_PER_PASS // batch)):
            for layer, (keys, values) in zip(cache.layers, prompt_kv):
                layer.keys, layer.values = keys, values  # back to the prompt alone
            inputs, targets, offsets, segment, mask = _packed(label_ids, group, prefix_mask)
            logits = self.model(
                input_ids=inputs.expand(batch, -1),
                attention_mask=mask,
                position_ids=prefix_mask.sum(-1, keepdim=True) + offsets,
                use_cache=False,
                **{_CACHE_KWARG: cache},
            ).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            token_logp = logp.gather(-1, targets.expand(batch, -1).unsqueeze(-1)).squeeze(-1)
            rest = rest + torch.zeros((batch, len(label_ids))).index_add(1, segment, token_logp)
        return rest


def _label_groups(label_ids: list[list[int]], budget: int) -> list[list[int]]:
    """Indexes of the multi-token labels, grouped so that each group packs at most
    `budget` tokens (a longer label goes alone)."""
    groups, size = [[]], 0
    for j, ids in enumerate(label_ids):
        n = len(ids) - 1  # the tokens a pass feeds: all but the last
        if n == 0:
            continue
        if groups[-1] and size + n > budget:
            groups.append([])
            size = 0
        groups[-1].append(j)
        size += n
    return groups


def _packed(label_ids: list[list[int]], group: list[int], prefix_mask: torch.Tensor):
    """One packed continuation for a group of labels: each label feeds its tokens but
    the last and is scored on its tokens but the first.

    Returns [1, T] inputs and targets, [1, T] offsets after the prompt, [T] the label
    each token belongs to, and the [B, 1, T, P+T] additive attention mask in which a
    label token sees the prompt's real tokens and its own label's earlier tokens."""
    inputs, targets, offsets, segment = [], [], [], []
    for j in group:
        ids = label_ids[j]
        inputs += ids[:-1]
        targets += ids[1:]
        offsets += range(len(ids) - 1)
        segment += [j] * (len(ids) - 1)
    segment_t = torch.tensor(segment)
    offsets_t = torch.tensor(offsets)
    own = (segment_t[:, None] == segment_t[None, :]) & (offsets_t[None, :] <= offsets_t[:, None])
    batch, width = prefix_mask.shape
    sees = torch.cat(
        [
            prefix_mask.bool()[:, None, :].expand(batch, len(segment), width),
            own.expand(batch, -1, -1),
        ],
        dim=-1,
    )
    mask = torch.zeros(sees.shape).masked_fill_(~sees, torch.finfo(torch.float32).min)
    return (
        torch.tensor([inputs]),
        torch.tensor([targets]),
        offsets_t[None, :],
        segment_t,
        mask[:, None],
    )


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding, so that every prompt ends at the same position."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
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
