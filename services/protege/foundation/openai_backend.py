"""Foundation model behind any OpenAI-compatible completions endpoint (a vLLM server,
a hosted API, or `protege fm-server`). Labels are scored like everywhere else: the
log-likelihood of each label's words after the prompt, read from the legacy
completions API with `echo=True, logprobs=0, max_tokens=0` (as lm-eval-harness does).
The label's tokens are found by counting from the end, never by `text_offset`:
vLLM's offsets count a BOS token's text and are off by its length.

An adapter is asked for by its model name (`model=adapter.name`): the way vLLM's
OpenAI server (`--lora-modules name=path`) and Ray Serve LLM expose LoRA adapters."""

from __future__ import annotations

import httpx
import numpy as np

from protege.foundation.backend import Adapter
from protege.foundation.prompts import continuations, scored_sequences
from protege.foundation.scoring import label_logprobs, sequence_probabilities
from protege.schemas import ModelRef
from protege.settings import Settings, secret_value
from protege.taskspec import PromptSpec, TaskSpec


class OpenAIBackend:
    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float = 60.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s
        )
        self.model = model
        self.ref = ModelRef(model=model, version="openai")

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIBackend:
        if not settings.openai_base_url or not settings.fm_model:
            raise ValueError(
                "the openai backend needs PROTEGE_OPENAI_BASE_URL and PROTEGE_FM_MODEL"
            )
        return cls(
            settings.openai_base_url,
            settings.fm_model,
            secret_value(settings.openai_api_key),
            settings.openai_timeout_s,
        )

    def predict_proba(
        self,
        task: TaskSpec,
        texts: list[str],
        prompt: PromptSpec | None = None,
        adapter: Adapter | None = None,
    ) -> np.ndarray:
        prompt = prompt or task.prompt
        model = adapter.name if adapter is not None else self.model
        n_labels = len(continuations(task))
        prefixes, sequences = scored_sequences(task, texts, prompt)
        # Each prompt is echoed alone too: its token count, against its sequences',
        # says how many tokens each label adds, whatever this endpoint's tokenizer.
        choices = self._echo(model, sequences + prefixes)
        prefix_choices = choices[len(sequences) :]
        per_sequence = [
            label_logprobs(
                choice["logprobs"]["token_logprobs"],
                len(prefix_choices[k // n_labels]["logprobs"]["token_logprobs"]),
                len(choice["logprobs"]["token_logprobs"]),
            )
            for k, choice in enumerate(choices[: len(sequences)])
        ]
        return sequence_probabilities(per_sequence, n_labels, prompt.length_normalize)

    def _echo(self, model: str, prompts: list[str]) -> list[dict]:
        """One choice per prompt, in order, each with the log-prob of every token."""
        response = self.client.post(
            "/completions",
            json={
                "model": model,
                "prompt": prompts,
                "max_tokens": 0,
                "echo": True,
                "logprobs": 0,
                "temperature": 0.0,
            },
        )
        response.raise_for_status()
        choices = sorted(response.json()["choices"], key=lambda c: c["index"])
        if len(choices) != len(prompts):
            raise RuntimeError(
                f"endpoint returned {len(choices)} choices for {len(prompts)} prompts"
            )
        return choices
