"""Settings (from `PROTEGE_*` environment variables) and task specs (from YAML).

Every task is configuration: its labels, the prompt the foundation model sees,
the routing policy and its limits. Many tasks share one deployment.
"""

from __future__ import annotations

import re
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_TASKS_FILE = PROJECT_ROOT / "deploy" / "tasks.yaml"
TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class StrictModel(BaseModel):
    """Config models reject unknown keys, so that a typo fails loudly at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelSpec(StrictModel):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(min_length=1, description="One line; shown to the FM in prompts.")
    verbalizer: str | None = Field(
        default=None, description="Words the FM scores for this label; defaults to the name."
    )

    @property
    def words(self) -> str:
        return self.verbalizer or self.name


class PromptSpec(StrictModel):
    """How the foundation model is asked. `{labels}`, `{text}` and `{examples}` are filled in."""

    template: str = Field(
        default=(
            "Classify the text into one of these labels.\n{labels}\n\n{examples}"
            "Text: {text}\nLabel:"
        )
    )
    examples: list[tuple[str, str]] = Field(
        default_factory=list, description="Optional few-shot (text, label) pairs."
    )
    length_normalize: bool = Field(
        default=False,
        description="Score labels by mean instead of summed token log-prob (helps multi-token labels).",
    )

    @field_validator("template")
    @classmethod
    def _has_text_slot(cls, value: str) -> str:
        if "{text}" not in value:
            raise ValueError("prompt template must contain {text}")
        return value


class Policy(str, Enum):
    cascade = "cascade"
    foundation_only = "foundation-only"
    specialist_only = "specialist-only"


class RoutingSpec(StrictModel):
    policy: Policy = Policy.cascade
    threshold: float = Field(
        default=0.8, ge=0.0, le=1.0,
        description="Cascade: below this specialist confidence the FM answers instead.",
    )
    shadow_rate: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Share of specialist answers that the FM also scores, off the critical path.",
    )


class LimitsSpec(StrictModel):
    max_text_chars: int = Field(default=2000, gt=0, description="Longer texts are a 422.")
    max_batch: int = Field(default=64, gt=0, description="Most texts in one predict call.")
    top_k: int = Field(default=5, gt=0, description="How many label probabilities to return.")


class TaskSpec(StrictModel):
    name: str = Field(pattern=TASK_NAME_PATTERN)
    description: str = ""
    labels: list[LabelSpec] = Field(min_length=2)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[LabelSpec]) -> list[LabelSpec]:
        names = [label.name for label in labels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate labels: {duplicates}")
        return labels

    @model_validator(mode="after")
    def _examples_use_known_labels(self) -> TaskSpec:
        known = set(self.label_names)
        for _, label in self.prompt.examples:
            if label not in known:
                raise ValueError(f"prompt example uses unknown label {label!r}")
        return self

    @cached_property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def label_index(self, name: str) -> int:
        return self.label_names.index(name)


class TasksFile(StrictModel):
    tasks: list[TaskSpec] = Field(min_length=1)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names in {names}")
        return tasks


def load_tasks(path: Path | str) -> dict[str, TaskSpec]:
    """Read and validate a tasks YAML file; errors name the file and the field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ValueError(f"tasks file not found: {path}") from exc
    try:
        parsed = TasksFile.model_validate(raw)
    except Exception as exc:
        raise ValueError(f"invalid tasks file {path}: {exc}") from exc
    return {task.name: task for task in parsed.tasks}


class Settings(BaseSettings):
    """Deployment settings; every field can be set as `PROTEGE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="PROTEGE_", extra="ignore")

    home: Path = Field(default=Path.home() / ".protege", description="Models, caches, spool.")
    tasks_file: Path = DEFAULT_TASKS_FILE
    http_host: str = "127.0.0.1"
    http_port: int = 8000

    # Foundation model
    fm_backend: Literal["transformers", "vllm", "openai"] = "transformers"
    fm_model: str | None = Field(
        default=None, description="transformers: a local model folder; vllm/openai: model name."
    )
    fm_max_batch: int = Field(default=16, gt=0, description="Texts scored together by the FM.")
    fm_num_gpus: float = Field(default=0.0, ge=0.0)
    fm_threads: int | None = Field(default=None, description="torch threads on CPU.")
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    openai_timeout_s: float = 60.0
    vllm_kwargs: dict = Field(default_factory=dict, description="Extra vllm.LLM(...) arguments.")

    # Specialist
    specialist_max_batch: int = Field(default=64, gt=0)
    specialist_batch_wait_s: float = Field(
        default=0.002, ge=0.0, description="How long a batch waits to fill: ~ one ONNX call."
    )

    # Auth
    auth_disabled: bool = False
    api_keys: str | None = Field(
        default=None, description="'KEY=role,role;KEY2=admin' (roles: predict, feedback, admin)."
    )
    api_keys_file: Path | None = Field(default=None, description="JSON or YAML {key: [roles]}.")
    signing_secret: str | None = Field(
        default=None, description="HMAC key for prediction ids; generated under home when unset."
    )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def load_tasks(self) -> dict[str, TaskSpec]:
        return load_tasks(self.tasks_file)


def valid_task_name(name: str) -> bool:
    return re.fullmatch(TASK_NAME_PATTERN, name) is not None
