"""Deployment settings, from `PROTEGE_*` environment variables (pydantic-settings):
where the services find each other (Kafka, MLflow, the example store), the FM
backend, auth and limits. What a task *is* lives in `protege.taskspec`.

`load_settings()` reads them once and turns a bad variable into `SettingsError`,
naming the variable, before anything starts.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protege.taskspec import DEFAULT_TASKS_FILE, TaskSpec, load_tasks, parse_tasks

ENV_PREFIX = "PROTEGE_"
DEFAULT_NAMESPACE = "protege"


class SettingsError(ValueError):
    """Settings that cannot be used; one line per problem, naming the variable."""


class Settings(BaseSettings):
    """Deployment settings; every field can be set as `PROTEGE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    namespace: str = Field(
        default=DEFAULT_NAMESPACE,
        pattern=r"^[a-z0-9][a-z0-9.-]{0,99}$",
        description="Prefix of every name deployments may share (topics, consumer groups, "
        "MLflow models and experiments), so that two on one Kafka or MLflow stay apart.",
    )
    home: Path = Field(default=Path.home() / ".protege", description="Models, caches, spool.")
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "protege",
        description="Converted model weights; shared by every home on the machine.",
    )
    tasks_file: Path = DEFAULT_TASKS_FILE
    tasks_inline: str | None = Field(
        default=None,
        description="The tasks file's YAML as text, read instead of tasks_file: a Serve "
        "argument reaches replicas in place, a mounted file only when the kubelet refreshes it.",
    )
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
    openai_api_key: SecretStr | None = None
    openai_timeout_s: float = 60.0
    fm_deadline_s: float = Field(
        default=10.0,
        gt=0.0,
        description="Longest a request waits on the FM: an escalation then gets the "
        "specialist's answer marked degraded, an FM-only answer a 503 with Retry-After.",
    )
    vllm_kwargs: dict = Field(
        default_factory=dict, description="Extra vLLM engine arguments (AsyncEngineArgs)."
    )
    fm_max_loras: int = Field(
        default=4, gt=0, description="vllm: LoRA adapters held on the GPU at once (max_loras)."
    )
    # The improver's way to the deployment's FM (it loads none of its own)
    fm_url: str | None = Field(
        default=None,
        description="The gateway the improver asks for FM answers (/v1/foundation); unset: "
        "this machine's, http://127.0.0.1:<http_port>.",
    )
    fm_key: SecretStr | None = Field(
        default=None, description="The improver's API key there (role foundation)."
    )
    fm_score_deadline_s: float = Field(
        default=120.0,
        gt=0.0,
        description="Longest the gateway waits on the FM for the improver's texts (then a "
        "503); the improver waits this long plus a margin.",
    )

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
    api_keys: SecretStr | None = Field(
        default=None,
        description="'[name:]KEY=role,role;...' (roles: predict, feedback, trusted, foundation, admin).",
    )
    api_keys_file: Path | None = Field(
        default=None, description="JSON or YAML {keys: [{name, key or sha256, roles}]}."
    )
    signing_secret: SecretStr | None = Field(
        default=None, description="HMAC key for prediction ids; generated under home when unset."
    )

    # Limits: what one caller, one request and the whole replica may take
    max_body_bytes: int = Field(
        default=1 << 20,
        gt=0,
        description="Largest request body; counted while it streams in, a 413 past it "
        "(1 MiB holds a full batch of 64 texts of 2,000 characters, JSON-escaped).",
    )
    rate_per_s: float = Field(
        default=50.0,
        ge=0.0,
        description="Requests a second each API key may make, per gateway replica (a token "
        "bucket; 0: no limit); a key in the keys file may set its own `rate_per_s`.",
    )
    rate_burst: int = Field(
        default=100, gt=0, description="Requests a key may make at once before the rate applies."
    )
    feedback_per_hour: int = Field(
        default=2000,
        ge=0,
        description="Verdicts each reviewer may send an hour, per replica (0: no limit): a "
        "flood of verdicts would steer training; a key may set its own `feedback_per_hour`.",
    )
    max_ongoing_requests: int = Field(
        default=256, gt=0, description="Requests a gateway replica works on at once."
    )
    max_queued_requests: int = Field(
        default=512,
        ge=-1,
        description="Requests waiting for a replica beyond that; more are shed with a 503 "
        "and Retry-After instead of queueing without bound (-1: unbounded).",
    )
    retry_after_s: float = Field(
        default=1.0, gt=0.0, description="Retry-After of shed or FM-unavailable answers."
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
        default_factory=dict,
        repr=False,  # may hold ssl_password or tokens
        description="Extra kafka-python client arguments, passed through.",
    )
    kafka_topic_predictions: str | None = Field(
        default=None, validate_default=True, description="Default <namespace>.predictions."
    )
    kafka_topic_feedback: str | None = Field(
        default=None, validate_default=True, description="Default <namespace>.feedback."
    )
    kafka_topic_models: str | None = Field(
        default=None, validate_default=True, description="Default <namespace>.models."
    )

    @field_validator("kafka_topic_predictions", "kafka_topic_feedback", "kafka_topic_models")
    @classmethod
    def _topic_in_namespace(cls, value: str | None, info: ValidationInfo) -> str:
        kind = info.field_name.removeprefix("kafka_topic_")
        return value or f"{info.data.get('namespace', DEFAULT_NAMESPACE)}.{kind}"

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
    events_spool_queue_size: int = Field(
        default=100_000,
        gt=0,
        description="Events waiting for the spool's disk (written off the request path); "
        "past it they are dropped (logged) rather than make a request wait.",
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
        description="Train as a Ray job: auto = when a Ray is known (PROTEGE_RAY_DASHBOARD_URL, "
        "RAY_ADDRESS or an initialized Ray) and either the task asks for GPUs or its CPUs are "
        "free now; never: in the improver's process.",
    )
    ray_dashboard_url: str | None = Field(
        default=None,
        description="Ray's dashboard (the Jobs API: training jobs, `protege jobs`, "
        "/v1/admin/jobs), e.g. http://HEAD:8265. Unset: RAY_API_SERVER_ADDRESS, else the "
        "connected Ray's, else http://127.0.0.1:8265. A loopback URL's port is also where "
        "`protege up` starts its Ray's dashboard.",
    )
    training_deadline_s: float = Field(
        default=3000.0,
        gt=0.0,
        description="A training job is stopped (and its round fails) after this long, unless "
        "the task's `training.deadline_s` says otherwise; keep it under improver_lease_s.",
    )
    training_poll_s: float = Field(
        default=1.0, gt=0.0, description="How often the improver asks a training job's status."
    )
    jobs_uri: str | None = Field(
        default=None,
        validate_default=True,
        description="Where training jobs leave their candidates for the improver: a folder both "
        "reach or an MLflow artifact URI (s3://..., mlflow-artifacts:/protege-jobs through "
        "the MLflow server). Default <home>/jobs (one machine).",
    )

    @field_validator("jobs_uri")
    @classmethod
    def _jobs_under_home(cls, value: str | None, info: ValidationInfo) -> str:
        return value or str(Path(info.data["home"]) / "jobs")

    improver_group: str | None = Field(
        default=None,
        validate_default=True,
        description="The improver's Kafka consumer group (retrain requests: <group>-requests); "
        "default <namespace>-improver.",
    )

    @field_validator("improver_group")
    @classmethod
    def _group_in_namespace(cls, value: str | None, info: ValidationInfo) -> str:
        return value or f"{info.data.get('namespace', DEFAULT_NAMESPACE)}-improver"

    improver_check_s: float = Field(
        default=5.0, gt=0.0, description="How often the improver checks each task's triggers."
    )
    improver_stop_timeout_s: float = Field(
        default=30.0,
        gt=0.0,
        description="On SIGTERM, a round in progress gets this long to finish; then it is "
        "abandoned and its lease freed (the process exits within this + 10 s).",
    )
    store_prune_s: float = Field(
        default=600.0,
        gt=0.0,
        description="How often the improver applies each task's `retention` to the store.",
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
    improver_report_timeout_s: float = Field(
        default=60.0,
        gt=0.0,
        description="The console's wait for a task's LF report and errors: the improver "
        "refits the label model for them.",
    )

    # The review console (/review)
    console_session_s: float = Field(
        default=8 * 3600.0,
        gt=0.0,
        description="A console sign-in lasts this long (a working day); the key is "
        "checked again on every request, so a removed key ends its sessions at once.",
    )
    console_secure_cookie: bool = Field(
        default=False,
        description="Mark the console's cookies Secure (browsers send them over https only): "
        "set it where reviewers reach the gateway over https, TLS ending in front of it. "
        "Requests that arrive over https get Secure cookies anyway.",
    )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def load_tasks(self) -> dict[str, TaskSpec]:
        """The tasks: `tasks_inline` when set, else the `tasks_file`."""
        if self.tasks_inline is not None:
            return parse_tasks(self.tasks_inline, f"{ENV_PREFIX}TASKS_INLINE")
        return load_tasks(self.tasks_file)


def _holds_secret(annotation: object) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


# Never passed as arguments (Ray Serve keeps those in its config and shows them): each
# process reads them from its own environment. The SecretStr fields, and the Kafka
# pass-through options, which may carry `ssl_password` or SASL tokens.
ENV_ONLY_FIELDS = frozenset(
    [name for name, f in Settings.model_fields.items() if _holds_secret(f.annotation)]
    + ["kafka_client_options"]
)


def public_args(settings: Settings) -> dict:
    """The settings that may travel as arguments (JSON): all but `ENV_ONLY_FIELDS`."""
    return settings.model_dump(mode="json", exclude=set(ENV_ONLY_FIELDS))


def secret_env(settings: Settings) -> dict[str, str]:
    """`ENV_ONLY_FIELDS` that are set, as the PROTEGE_* variables that give them back."""
    env = {}
    for name in sorted(ENV_ONLY_FIELDS):
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or value == {}:
            continue
        env[f"{ENV_PREFIX}{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def secret_value(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


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
