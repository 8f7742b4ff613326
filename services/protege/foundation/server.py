"""`protege fm-server`: the transformers backend behind a small OpenAI-compatible
completions API, so that the `openai` backend (and any OpenAI client) can score
with a real model on loopback. Only scoring is offered: `echo=True` with
`max_tokens=0`, the call lm-eval-harness and Protégé make.

With `vllm_offsets` it reports tokens as a vLLM server does for a model whose
tokenizer adds a BOS token: the BOS first (no log-prob) and `text_offset`s that are
running sums of the decoded tokens' lengths, so offsets no longer point into the
prompt. Clients are tested against that; the log-probs stay the model's without a
BOS, so that they still equal the in-process backend's.

Adapters (`adapters`: name -> fm-adapter folder, e.g. every adapter under a folder
by `adapter_folders`) are served as models of their own, by name, as vLLM's OpenAI
server serves `--lora-modules`."""

from __future__ import annotations

import time
from itertools import accumulate
from pathlib import Path

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from protege.artifact import ADAPTER_KIND, META_FILE, SpecialistMeta, adapter_name
from protege.foundation.backend import Adapter
from protege.foundation.transformers_backend import TransformersBackend


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send many optional fields

    model: str
    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = None
    temperature: float = 0.0


def adapter_folders(root: Path) -> dict[str, Path]:
    """Every fm-adapter folder directly under `root`, by its adapter name (`task@vN`)."""
    found = {}
    for folder in sorted(p for p in root.iterdir() if (p / META_FILE).exists()):
        meta = SpecialistMeta.read(folder)
        if meta.kind == ADAPTER_KIND:
            found[adapter_name(meta.task, meta.version)] = folder
    return found


def build_fm_server(
    backend: TransformersBackend,
    model_name: str,
    vllm_offsets: bool = False,
    adapters: dict[str, Path] | None = None,
) -> FastAPI:
    app = FastAPI(title="Protégé FM server (OpenAI-compatible scoring)")
    served = {model_name: None, **{n: Adapter(n, f) for n, f in (adapters or {}).items()}}

    @app.get("/v1/models")
    def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "protege"} for name in served],
        }

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> dict:
        if request.model not in served:
            raise HTTPException(
                404, f"model {request.model!r} not served here; try one of {sorted(served)}"
            )
        adapter = served[request.model]
        if request.max_tokens != 0 or not request.echo:
            raise HTTPException(400, "this server only scores prompts: use echo=true, max_tokens=0")
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        choices = []
        for index, prompt in enumerate(prompts):
            tokens, values, offsets = backend.token_logprobs(prompt, adapter=adapter)
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
            "model": request.model,
            "choices": choices,
            "usage": {"prompt_tokens": n_tokens, "completion_tokens": 0, "total_tokens": n_tokens},
        }

    return app
