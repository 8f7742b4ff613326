"""Deployment settings, from `PROTEGE_*` environment variables (pydantic-settings):
where the services find each other (Kafka, MLflow, the example store), the FM
backend, auth and limits. What a task *is* lives in `protege.taskspec`.

`load_settings()` reads them once and turns a bad variable into `SettingsError`,
naming the variable, before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protege.taskspec import DEFAULT_TASKS_FILE, TaskSpec, load_tasks

ENV_PREFIX = "PROTEGE_"


class SettingsError(ValueError):
    """Settings that cannot be used; one line per problem, naming the variable."""


class Settings(BaseSettings):
    """Deployment settings; every field can be set as `PROTEGE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

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
        default=0.0,
        ge=0.0,
        description="How long a batch waits to fill. 0: texts that arrive in the same event-loop "
        "turn share a call (measured: a 2 ms wait cost 2.7 ms at concurrency 1, gained 12 % at 32).",
    )
    shadow_max_inflight: int = Field(
        default=2,
        ge=0,
        description="Shadow FM runs in flight per gateway replica; more are skipped, so that "
        "shadows never queue ahead of escalations on a slow (CPU) FM.",
    )
    model_poll_s: float = Field(
        default=30.0,
        gt=0.0,
        description="How often replicas check the registry's champion (model events act at once).",
    )
    watch_registry: bool = Field(
        default=True, description="Gateways follow the registry's champion (hot swap)."
    )

    # Auth
    auth_disabled: bool = False
    api_keys: str | None = Field(
        default=None,
        description="'[name:]KEY=role,role;...' (roles: predict, feedback, trusted, admin).",
    )
    api_keys_file: Path | None = Field(
        default=None, description="JSON or YAML {keys: [{name, key or sha256, roles}]}."
    )
    signing_secret: str | None = Field(
        default=None, description="HMAC key for prediction ids; generated under home when unset."
    )

    # Event log
    kafka_bootstrap: str | None = Field(
        default=None,
        description="'host:port[,host:port]'; unset: `protege up` starts the embedded broker.",
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
        default=5.0,
        gt=0.0,
        description="An event unacknowledged this long means the broker is gone: spool it.",
    )
    kafka_reconnect_max_s: float = Field(
        default=2.0, gt=0.0, description="Longest wait between reconnect tries while spooling."
    )
    kafka_linger_ms: int = Field(
        default=50,
        ge=0,
        description="Producer batching delay; kafka-python's CPU cost is per batch, so batch.",
    )
    kafka_session_timeout_ms: int = Field(
        default=10000,
        gt=0,
        description="Consumer group session; Tansu delays a new group's join by about this long.",
    )
    events_queue_size: int = Field(
        default=10000,
        gt=0,
        description="In-memory events awaiting Kafka; overflow goes to the spool.",
    )
    events_spool_dir: Path | None = Field(
        default=None,
        validate_default=True,
        description="Default: <home>/spool; each producer process writes its own producer-<n>/.",
    )
    events_spool_max_bytes: int = Field(
        default=1 << 30,
        gt=0,
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
        default=None,
        validate_default=True,
        description="Default sqlite:///<home>/mlflow.db; production: a server URL or postgresql://",
    )
    mlflow_artifact_root: str | None = Field(
        default=None,
        validate_default=True,
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
        default=None,
        validate_default=True,
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
        default=3600.0,
        gt=0.0,
        description="A training round's per-task lock expires after this long (a crashed round).",
    )
    improver_port: int = Field(
        default=0,
        ge=0,
        description="The improver's internal API (health, review queue); 0: off.",
    )
    improver_host: str = Field(
        default="127.0.0.1",
        description="Where the improver's API listens; it has no auth: keep it off public networks.",
    )
    improver_url: str | None = Field(
        default=None,
        description="The gateway's way to the improver's API (the review queue); unset: 503.",
    )
    improver_timeout_s: float = Field(
        default=5.0,
        gt=0.0,
        description="The gateway's wait for the improver's API; also its Retry-After when away.",
    )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def load_tasks(self) -> dict[str, TaskSpec]:
        return load_tasks(self.tasks_file)


def load_settings(**overrides: object) -> Settings:
    """The environment's settings (and `overrides`); raises SettingsError on bad values."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            lines.append(
                f"{ENV_PREFIX}{field.split('.')[0].upper()}: {error['msg']}"
                + (f" (at {field})" if "." in field else "")
            )
        raise SettingsError("\n".join(lines)) from None
