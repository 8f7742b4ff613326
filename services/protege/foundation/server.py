"""`protege fm-server`: the transformers backend behind a small OpenAI-compatible
completions API, so that the `openai` backend (and any OpenAI client) can score
with a real model on loopback. Only scoring is offered: `echo=True` with
`max_tokens=0`, the call lm-eval-harness and Protégé make.

With `vllm_offsets` it reports tokens as a vLLM server does for a model whose
tokenizer adds a BOS token: the BOS first (no log-prob) and `text_offset`s that are
running sums of the decoded tokens' lengths, so offsets no longer point into the
prompt. Clients are tested against that; the log-probs stay the model's without a
BOS, so that they still equal the in-process backend's."""

from __future__ import annotations

import time
from itertools import accumulate

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from protege.foundation.transformers_backend import TransformersBackend


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send many optional fields

    model: str
    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = None
    temperature: float = 0.0


def build_fm_server(
    backend: TransformersBackend, model_name: str, vllm_offsets: bool = False
) -> FastAPI:
    app = FastAPI(title="Protégé FM server (OpenAI-compatible scoring)")

    @app.get("/v1/models")
    def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "owned_by": "protege"}],
        }

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> dict:
        if request.model != model_name:
            raise HTTPException(404, f"model {request.model!r} not served here; try {model_name!r}")
        if request.max_tokens != 0 or not request.echo:
            raise HTTPException(400, "this server only scores prompts: use echo=true, max_tokens=0")
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        choices = []
        for index, prompt in enumerate(prompts):
            tokens, values, offsets = backend.token_logprobs(prompt)
            if vllm_offsets:
                tokens, values = [backend.tokenizer.bos_token, *tokens], [None, *values]
                offsets = list(accumulate((len(t) for t in tokens[:-1]), initial=0))
            logprobs = (
                {
                    "tokens": tokens,
                    "token_logprobs": values,
                    "text_offset": offsets,
                    "top_logprobs": None,
                }
                if request.logprobs is not None
                else None
            )
            choices.append(
                {"index": index, "text": prompt, "logprobs": logprobs, "finish_reason": "length"}
            )
        n_tokens = sum(len(c["logprobs"]["tokens"]) for c in choices if c["logprobs"])
        return {
            "id": f"cmpl-{time.time_ns()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": {"prompt_tokens": n_tokens, "completion_tokens": 0, "total_tokens": n_tokens},
        }

    return app
