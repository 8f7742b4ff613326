"""Build a small real FM adapter for serving tests: a LoRA of the CPU SmolLM2 with
random (not zero) weights, so that it changes the model's answers, saved by PEFT
beside a `model.json` of kind fm-adapter. Untrained: the tests ask who answers,
not how well."""

from __future__ import annotations

from pathlib import Path

import torch

from protege.artifact import ADAPTER_DIR, ADAPTER_KIND, SpecialistMeta
from protege.foundation.smollm import MODEL_NAME, converted_model_folder
from protege.settings import Settings


def build_adapter(folder: Path, task: str, labels: list[str], version: str = "1") -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(converted_model_folder(Settings().cache_dir))
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder / ADAPTER_DIR)
    SpecialistMeta(
        task=task,
        model="smollm2-lora",
        version=version,
        labels=list(labels),
        kind=ADAPTER_KIND,
        base_model=MODEL_NAME,
    ).write(folder)
    return folder
