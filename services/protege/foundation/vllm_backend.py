"""Foundation model on GPU with vLLM: the same prompts and label scoring as the
transformers backend, through vLLM's prompt log-probs. Each (prompt + label) is
one sequence; vLLM's prefix caching computes the shared prompt once. The label's
tokens are the sequence's last ones, as many as the label adds to the prompt.

The engine is vLLM's async one (`AsyncLLMEngine`, V1's `AsyncLLM`), run on an event
loop of its own thread: every sequence is its own request, so concurrent calls
(several FM batches, several adapters) share the GPU's batches continuously instead
of waiting for each other's `generate` to return. LoRA is on: an adapter call sends
each request with a `LoRARequest` (its name, a stable int id, PEFT's folder), which
the engine loads on first use and keeps up to `max_loras` on the GPU at once.

vllm is imported lazily: CPU installs never need it (`pip install 'protege[gpu]'`)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid

import numpy as np

from protege.artifact import ADAPTER_DIR
from protege.foundation.backend import Adapter
from protege.foundation.prompts import continuations, scored_sequences
from protege.foundation.scoring import label_logprobs, sequence_probabilities
from protege.schemas import ModelRef
from protege.settings import Settings
from protege.taskspec import PromptSpec, TaskSpec


class VLLMBackend:
    def __init__(self, model: str, max_loras: int = 4, **engine_kwargs):
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams
        except ImportError as exc:
            raise RuntimeError(
                "the vllm backend needs vLLM on a GPU machine: pip install 'protege[gpu]'"
            ) from exc

        engine_kwargs.setdefault("enable_prefix_caching", True)
        args = AsyncEngineArgs(model=model, enable_lora=True, max_loras=max_loras, **engine_kwargs)
        # The engine's requests and output handler live on this loop; callers on any
        # thread hand it coroutines (`_run`).
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vllm-engine", daemon=True).start()
        self.engine = self._run(_started(AsyncLLMEngine, args))
        self.tokenizer = self.engine.get_tokenizer()
        # max_tokens=1 is the least vLLM generates; prompt_logprobs=0 returns the
        # log-prob of each prompt token itself.
        self.params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        self.ref = ModelRef(model=model, version="vllm")
        self._lora_ids: dict[str, int] = {}
        self._next_id = itertools.count(1)  # vLLM's LoRA ids are positive ints
        self._ids_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMBackend:
        if not settings.fm_model:
            raise ValueError("the vllm backend needs PROTEGE_FM_MODEL (a model name or path)")
        return cls(settings.fm_model, settings.fm_max_loras, **settings.vllm_kwargs)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def predict_proba(
        self,
        task: TaskSpec,
        texts: list[str],
        prompt: PromptSpec | None = None,
        adapter: Adapter | None = None,
    ) -> np.ndarray:
        prompt = prompt or task.prompt
        n_labels = len(continuations(task))
        prefixes, sequences = scored_sequences(task, texts, prompt)
        lora = self._lora(adapter)
        outputs = self._run(self._all_prompt_logprobs(sequences, lora))
        prefix_counts = [self._count(p) for p in prefixes]
        per_sequence = [
            label_logprobs(
                [  # the engine's tokens, BOS included where it adds one
                    None if lp is None else lp[t].logprob
                    for t, lp in zip(output.prompt_token_ids, output.prompt_logprobs)
                ],
                prefix_counts[k // n_labels],
                self._count(sequences[k]),
            )
            for k, output in enumerate(outputs)
        ]
        return sequence_probabilities(per_sequence, n_labels, prompt.length_normalize)

    async def _all_prompt_logprobs(self, sequences: list[str], lora) -> list:
        """Every sequence its own request, all in flight at once (on the engine's loop)."""
        return await asyncio.gather(*(self._prompt_logprobs(s, lora) for s in sequences))

    async def _prompt_logprobs(self, sequence: str, lora):
        """The finished request's output: one sequence scored by the engine."""
        final = None
        async for output in self.engine.generate(
            sequence, self.params, uuid.uuid4().hex, lora_request=lora
        ):
            final = output
        return final

    def _lora(self, adapter: Adapter | None):
        """vLLM's LoRARequest for an adapter (the same int id for a name, always)."""
        if adapter is None:
            return None
        if adapter.folder is None:
            raise ValueError(f"adapter {adapter.name!r}: the vllm backend needs its folder")
        from vllm.lora.request import LoRARequest

        with self._ids_lock:
            if adapter.name not in self._lora_ids:
                self._lora_ids[adapter.name] = next(self._next_id)
            lora_id = self._lora_ids[adapter.name]
        return LoRARequest(adapter.name, lora_id, str(adapter.folder / ADAPTER_DIR))

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


async def _started(engine_class, args):
    """The engine, built on the loop that will drive it."""
    return engine_class.from_engine_args(args)
