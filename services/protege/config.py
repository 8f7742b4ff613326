"""Settings (from `PROTEGE_*` environment variables) and task specs (from YAML).

Every task is configuration: its labels, the prompt the foundation model sees,
the routing policy and its limits. Many tasks share one deployment.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
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
    describe_labels: bool = Field(
        default=True, description="List each label with its description (off: words only)."
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


# Labeling: the cheap, noisy sources of labels that the label model combines.


class RuleSpec(StrictModel):
    """A declarative labeling function: votes `label` when one of its keywords (a whole
    word or phrase) or its regex occurs in the text, and abstains otherwise."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    label: str
    keywords: list[str] = Field(default_factory=list)
    regex: str | None = None
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _one_matcher(self) -> RuleSpec:
        if bool(self.keywords) == (self.regex is not None):
            raise ValueError(f"rule {self.name!r}: give exactly one of 'keywords' or 'regex'")
        if any(not k.strip() for k in self.keywords):
            raise ValueError(f"rule {self.name!r}: empty keyword")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"rule {self.name!r}: bad regex {self.regex!r}: {exc}") from exc
        return self


class PromptLFSpec(PromptSpec):
    """A prompt labeling function: the FM asked another way; votes its top label only
    when that label's probability reaches `threshold`."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    template: str
    threshold: float = Field(ge=0.0, le=1.0)

    def as_prompt(self) -> PromptSpec:
        return PromptSpec(**self.model_dump(include=set(PromptSpec.model_fields)))


class LabelModelSpec(StrictModel):
    kind: Literal["auto", "snorkel", "majority"] = Field(
        default="auto", description="auto: the better of the two on gold, recorded with the run."
    )
    epochs: int = Field(default=500, gt=0, description="Converges on youtube's 1.6k x 10 in < 1 s.")
    learning_rate: float = Field(default=0.01, gt=0.0, description="0.001 under-fits in 500 epochs.")
    l2: float = Field(default=0.01, ge=0.0, description="Keeps rare LFs' accuracies near the prior.")
    seed: int = 0
    min_gold: int = Field(
        default=20, ge=1,
        description="Fewer gold examples cannot tell the two apart: keep the default choice.",
    )


class LabelingSpec(StrictModel):
    rules: list[RuleSpec] = Field(default_factory=list)
    python_modules: list[str] = Field(
        default_factory=list, description="Modules whose @labeling_function objects are imported."
    )
    prompt_lfs: list[PromptLFSpec] = Field(default_factory=list)
    feedback_votes: bool = Field(default=True, description="Reviewer verdicts vote as LFs.")
    foundation_votes: bool = Field(
        default=True, description="The served FM's own answer (from the prediction event) votes."
    )
    specialist_votes: bool = Field(
        default=False,
        description="Off: the specialist was trained on these LFs' labels, so its vote would "
        "echo them (correlated, not independent) and entrench its own errors.",
    )
    holdout_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0,
        description="Share of gold texts, chosen by text hash, kept for the gate, never trained on.",
    )
    label_model: LabelModelSpec = Field(default_factory=LabelModelSpec)



# Improvement: how a candidate specialist is trained and gated.


class GateSpec(StrictModel):
    """What a candidate must show on held-out gold data before it may serve."""

    min_accuracy: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="Absolute floor; 0.5 is a coin flip on binary tasks: set it per task.",
    )
    min_gain: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Accuracy the candidate must gain over the champion.",
    )
    significance: float = Field(
        default=0.05, gt=0.0, lt=1.0,
        description="Level of the one-sided paired test that the candidate beats the champion.",
    )
    test: Literal["mcnemar", "bootstrap"] = Field(
        default="mcnemar", description="Paired test: exact McNemar, or a paired bootstrap."
    )
    bootstrap_rounds: int = Field(default=2000, gt=0, description="Resamples for `bootstrap`.")
    max_class_drop: float = Field(
        default=0.05, ge=0.0, le=1.0,
        description="Largest fall in any one class's recall vs the champion.",
    )
    cascade_target_accuracy: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Cascade calibration target; unset: the FM-only accuracy on the same data.",
    )


class TrainingSpec(StrictModel):
    """Specialist families to distill into (the better on validation is kept) and their knobs."""

    families: list[Literal["tfidf", "minilm"]] = Field(
        default_factory=lambda: ["tfidf", "minilm"], min_length=1
    )
    seed: int = 0
    num_gpus: float = Field(
        default=0.0, ge=0.0, description="Ray resource request; > 0 lands on GPU workers."
    )
    num_cpus: float = Field(default=1.0, gt=0.0)
    epochs: int = Field(
        default=200, gt=0, description="MiniLM head: most full-batch L-BFGS iterations."
    )
    minilm_c: float | None = Field(
        default=None, gt=0.0,
        description="Inverse L2 strength of the MiniLM head (as sklearn's C); unset: 1 or 10 by "
        "3-fold cross-validation on the training rows (youtube likes 1, banking77 10).",
    )
    tfidf_c: float = Field(
        default=10.0, gt=0.0, description="Inverse L2 strength of the TF-IDF logistic regression."
    )
    gold_weight: float = Field(
        default=1.0, gt=0.0, description="Weight of a gold (reviewed) example vs a soft one."
    )
    validation_fraction: float = Field(
        default=0.15, gt=0.0, lt=1.0,
        description="Held out of training to pick a family when no validation split is given.",
    )


class RetrainSpec(StrictModel):
    """When the improver trains a new candidate for the task, and what a round may spend.

    Triggers: every `every_feedback` new feedback events, every `every_minutes` (when
    anything new arrived), and on a RetrainRequest (`POST /v1/admin/tasks/{task}/retrain`).
    """

    every_feedback: int | None = Field(
        default=200, gt=0,
        description="New feedback events between rounds; unset: no feedback trigger.",
    )
    every_minutes: float | None = Field(
        default=None, gt=0.0,
        description="Timer trigger (only when events arrived since the last round); unset: off.",
    )
    min_holdout_gold: int = Field(
        default=20, ge=1,
        description="Fewer held-out gold examples cannot tell a candidate from a coin: skip.",
    )
    fm_eval_max: int = Field(
        default=64, ge=0,
        description="Held-out texts the improver may send to the FM per round when no FM "
        "output for them is recorded or cached (~0.3 s a text on CPU for 2 labels, ~5 s for 77).",
    )
    fm_calibration_min: int = Field(
        default=20, ge=1,
        description="Fewer held-out texts with an FM answer leave the cascade threshold uncalibrated.",
    )
    prompt_lf_budget: int = Field(
        default=64, ge=0,
        description="New texts each prompt LF may score per round (scores are cached, so "
        "coverage grows round by round); the rest abstain until scored.",
    )


# End of Improvement specs.


class TaskSpec(StrictModel):
    name: str = Field(pattern=TASK_NAME_PATTERN)
    description: str = ""
    labels: list[LabelSpec] = Field(min_length=2)
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    # Improvement
    gate: GateSpec = Field(default_factory=GateSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    labeling: LabelingSpec = Field(default_factory=LabelingSpec)
    retrain: RetrainSpec = Field(default_factory=RetrainSpec)

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

    @model_validator(mode="after")
    def _labeling_uses_known_labels(self) -> TaskSpec:
        known = set(self.label_names)
        for rule in self.labeling.rules:
            if rule.label not in known:
                raise ValueError(
                    f"task {self.name!r}: rule {rule.name!r} votes unknown label {rule.label!r}"
                )
        for spec in self.labeling.prompt_lfs:
            for _, label in spec.examples:
                if label not in known:
                    raise ValueError(
                        f"task {self.name!r}: prompt LF {spec.name!r} uses unknown label {label!r}"
                    )
        names = [r.name for r in self.labeling.rules] + [p.name for p in self.labeling.prompt_lfs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task {self.name!r}: duplicate labeling function names {duplicates}")
        return self

    @property
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
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "protege",
        description="Converted model weights; shared by every home on the machine.",
    )
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
        default=0.0, ge=0.0,
        description="How long a batch waits to fill. 0: texts that arrive in the same event-loop "
        "turn share a call (measured: a 2 ms wait cost 2.7 ms at concurrency 1, gained 12 % at 32).",
    )
    shadow_max_inflight: int = Field(
        default=2, ge=0,
        description="Shadow FM runs in flight per gateway replica; more are skipped, so that "
        "shadows never queue ahead of escalations on a slow (CPU) FM.",
    )
    model_poll_s: float = Field(
        default=30.0, gt=0.0,
        description="How often replicas check the registry's champion (model events act at once).",
    )
    watch_registry: bool = Field(
        default=True, description="Gateways follow the registry's champion (hot swap)."
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

    # Event log
    kafka_bootstrap: str | None = Field(
        default=None, description="'host:port[,host:port]'; unset: `protege up` starts the embedded broker."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER."
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_check_hostname: bool = True
    kafka_client_options: dict = Field(
        default_factory=dict, description="Extra kafka-python client arguments, passed through."
    )
    kafka_topic_predictions: str = "protege.predictions"
    kafka_topic_feedback: str = "protege.feedback"
    kafka_topic_models: str = "protege.models"
    kafka_partitions: int = Field(default=3, gt=0, description="For topics created at start.")
    kafka_replication_factor: int = Field(default=1, gt=0)
    kafka_ack_timeout_s: float = Field(
        default=5.0, gt=0.0,
        description="An event unacknowledged this long means the broker is gone: spool it.",
    )
    kafka_reconnect_max_s: float = Field(
        default=2.0, gt=0.0, description="Longest wait between reconnect tries while spooling."
    )
    kafka_linger_ms: int = Field(
        default=50, ge=0,
        description="Producer batching delay; kafka-python's CPU cost is per batch, so batch.",
    )
    kafka_session_timeout_ms: int = Field(
        default=10000, gt=0,
        description="Consumer group session; Tansu delays a new group's join by about this long.",
    )
    events_queue_size: int = Field(
        default=10000, gt=0, description="In-memory events awaiting Kafka; overflow goes to the spool."
    )
    events_spool_dir: Path | None = Field(
        default=None, validate_default=True,
        description="Default: <home>/spool; each producer process writes its own producer-<n>/.",
    )
    events_spool_max_bytes: int = Field(
        default=1 << 30, gt=0,
        description="Disk budget of each process's spool; past it events are dropped (logged).",
    )
    events_spool_segment_bytes: int = Field(default=16 << 20, gt=0)
    events_spool_fsync_s: float = Field(
        default=0.2, ge=0.0, description="Spool fsync interval: the most a power cut can lose."
    )

    @field_validator("events_spool_dir")
    @classmethod
    def _spool_under_home(cls, value: Path | None, info: ValidationInfo) -> Path:
        return value if value is not None else Path(info.data["home"]) / "spool"

    # Improvement: model registry (MLflow)
    mlflow_tracking_uri: str | None = Field(
        default=None, validate_default=True,
        description="Default sqlite:///<home>/mlflow.db; production: a server URL or postgresql://",
    )
    mlflow_artifact_root: str | None = Field(
        default=None, validate_default=True,
        description="Where new experiments keep artifacts; default <home>/mlartifacts "
        "(only with the default SQLite store; a tracking server chooses its own).",
    )

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _mlflow_under_home(cls, value: str | None, info: ValidationInfo) -> str:
        return value or f"sqlite:///{Path(info.data['home']) / 'mlflow.db'}"

    @field_validator("mlflow_artifact_root")
    @classmethod
    def _artifacts_under_home(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and str(info.data.get("mlflow_tracking_uri", "")).startswith("sqlite:"):
            return (Path(info.data["home"]) / "mlartifacts").as_uri()
        return value

    # Improvement: example store
    store_url: str | None = Field(
        default=None, validate_default=True,
        description="SQLAlchemy URL; default sqlite:///<home>/store.db, postgresql+psycopg://... in k8s.",
    )

    @field_validator("store_url")
    @classmethod
    def _store_under_home(cls, value: str | None, info: ValidationInfo) -> str:
        return value or f"sqlite:///{Path(info.data['home']) / 'store.db'}"

    # Improvement: the improver service
    improver_ray: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Train as a Ray task: auto = when connected to Ray (RAY_ADDRESS or an "
        "initialized Ray) and either the task asks for GPUs or its CPUs are free now.",
    )
    improver_check_s: float = Field(
        default=5.0, gt=0.0, description="How often the improver checks each task's triggers."
    )
    improver_lease_s: float = Field(
        default=3600.0, gt=0.0,
        description="A training round's per-task lock expires after this long (a crashed round).",
    )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


    def load_tasks(self) -> dict[str, TaskSpec]:
        return load_tasks(self.tasks_file)


def valid_task_name(name: str) -> bool:
    return re.fullmatch(TASK_NAME_PATTERN, name) is not None
