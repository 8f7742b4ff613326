"""Foundation model on GPU with vLLM: the same prompts and label scoring as the
transformers backend, through vLLM's prompt log-probs. Each (prompt + label) is
one sequence; vLLM's prefix caching computes the shared prompt once.

vllm is imported lazily: CPU installs never need it (`pip install 'protege[gpu]'`)."""

from __future__ import annotations

import numpy as np

from protege.foundation.prompts import continuations, scored_sequences
from protege.foundation.scoring import label_probabilities
from protege.schemas import ModelRef
from protege.settings import Settings
from protege.taskspec import PromptSpec, TaskSpec


class VLLMBackend:
    def __init__(self, model: str, **llm_kwargs):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise RuntimeError(
                "the vllm backend needs vLLM on a GPU machine: pip install 'protege[gpu]'"
            ) from exc

        llm_kwargs.setdefault("enable_prefix_caching", True)
        self.llm = LLM(model=model, **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        # max_tokens=1 is the least vLLM generates; prompt_logprobs=0 returns the
        # log-prob of each prompt token itself.
        self.params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        self.ref = ModelRef(model=model, version="vllm")

    @classmethod
    def from_settings(cls, settings: Settings) -> VLLMBackend:
        if not settings.fm_model:
            raise ValueError("the vllm backend needs PROTEGE_FM_MODEL (a model name or path)")
        return cls(settings.fm_model, **settings.vllm_kwargs)

    def predict_proba(
        self, task: TaskSpec, texts: list[str], prompt: PromptSpec | None = None
    ) -> np.ndarray:
        prompt = prompt or task.prompt
        conts = continuations(task)
        prefixes, sequences = scored_sequences(task, texts, prompt)
        outputs = self.llm.generate(sequences, self.params, use_tqdm=False)
        loglik = np.zeros((len(texts), len(conts)), dtype=np.float32)
        counts = np.zeros((len(texts), len(conts)), dtype=np.float32)
        for k, output in enumerate(outputs):
            i, j = divmod(k, len(conts))
            start = len(self.tokenizer(prefixes[i], add_special_tokens=False)["input_ids"])
            start += len(output.prompt_token_ids) - len(
                self.tokenizer(sequences[k], add_special_tokens=False)["input_ids"]
            )  # BOS or other special tokens the engine added in front
            token_ids = output.prompt_token_ids[start:]
            logprobs = output.prompt_logprobs[start:]
            loglik[i, j] = sum(lp[tid].logprob for tid, lp in zip(token_ids, logprobs))
            counts[i, j] = len(token_ids)
        return label_probabilities(loglik, counts, prompt.length_normalize)
