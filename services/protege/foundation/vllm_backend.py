"""Foundation model on GPU with vLLM: the same prompts and label scoring as the
transformers backend, through vLLM's prompt log-probs. Each (prompt + label) is
one sequence; vLLM's prefix caching computes the shared prompt once. The label's
tokens are the sequence's last ones, as many as the label adds to the prompt.

vllm is imported lazily: CPU installs never need it (`pip install 'protege[gpu]'`)."""

from __future__ import annotations

import numpy as np

from protege.foundation.prompts import continuations, scored_sequences
from protege.foundation.scoring import label_logprobs, sequence_probabilities
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
        n_labels = len(continuations(task))
        prefixes, sequences = scored_sequences(task, texts, prompt)
        outputs = self.llm.generate(sequences, self.params, use_tqdm=False)
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

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
