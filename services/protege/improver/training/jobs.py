"""Where a round's training runs: as a Ray job (Ray's Jobs API), or in the improver's
process where no Ray is known (`Settings.improver_ray`).

A job has the task's resource request (`training.num_cpus`/`num_gpus`, so that on a
cluster it lands on a GPU worker), metadata naming the task and round (`protege jobs
list`), and a deadline (`training.deadline_s`, else `Settings.training_deadline_s`) after
which the improver stops it. Its input goes up as the job's working_dir (JSON and npz,
`exchange`); it leaves the candidate at `Settings.jobs_uri`/<job id> (a folder under the
home on one machine; shared or MLflow artifact storage on a cluster), which the improver
reads back and deletes. A job that fails, is stopped or runs out of time raises
TrainingJobFailed naming the job, its status and its log's tail: the round fails,
registering nothing.

Ray appears only here and in `protege.jobs`; `distill.train_specialist` is plain Python.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import tempfile
import time
import uuid
from pathlib import Path

from protege.improver.training.dataset import TrainingSet
from protege.improver.training.distill import Candidate, Validation, train_specialist
from protege.improver.training.exchange import JobInput, download, read_candidate, write_input
from protege.jobs import (
    API_SERVER_ENV,
    KIND,
    KIND_KEY,
    TERMINAL,
    JobsUnavailable,
    client,
    free_cpus,
    stop_job,
    tail,
)
from protege.settings import Settings
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)

ENTRYPOINT_MODULE = "protege.improver.training.job"
STOP_WAIT_S = 15.0  # after a stop, how long to wait for Ray to report the job stopped
AGENT_WAIT_S = 60.0  # a Ray just started takes some seconds to accept jobs
# Each task's job while a round waits for it, so that an abandoned round's job can be
# stopped (`cancel_training`) rather than left to run out.
_training: dict[str, tuple[str, Settings]] = {}


class TrainingJobFailed(RuntimeError):
    """The training job did not succeed; the message names it, its status and log tail."""


def job_env(settings: Settings) -> dict[str, str]:
    """The job's environment: Protégé importable where the improver found it (the same
    image on a cluster), and MLflow's server when the candidate goes through it."""
    import protege

    root = Path(protege.__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{root}:${{PYTHONPATH}}"}  # Ray expands ${...}
    if settings.jobs_uri.startswith("mlflow-artifacts:"):
        env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    return env


def submit(
    task: TaskSpec,
    train: TrainingSet,
    settings: Settings,
    metadata: dict[str, str],
    kwargs: dict,
    jobs_client,
) -> str:
    """Submit the task's training as a Ray job; returns its id."""
    job_id = f"protege-train-{task.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    output = output_of(settings, job_id)
    with tempfile.TemporaryDirectory(prefix="protege-job-input-") as tmp:
        write_input(Path(tmp), JobInput(task.name, train, task.training, kwargs, output))
        submit_job = retrying(jobs_client.submit_job)
        submit_job(
            entrypoint=f"{shlex.quote(sys.executable)} -m {ENTRYPOINT_MODULE}",
            submission_id=job_id,
            runtime_env={"working_dir": tmp, "env_vars": job_env(settings)},
            metadata={
                KIND_KEY: KIND,
                "task": task.name,
                **{k: str(v) for k, v in metadata.items()},
            },
            entrypoint_num_cpus=task.training.num_cpus,
            entrypoint_num_gpus=task.training.num_gpus,
        )
    log.info("%s: training job %s submitted (output %s)", task.name, job_id, output)
    return job_id


def output_of(settings: Settings, job_id: str) -> str:
    """Where the job leaves its candidate."""
    return f"{settings.jobs_uri.rstrip('/')}/{job_id}"


def retrying(submit_job, timeout_s: float = AGENT_WAIT_S):
    """`submit_job`, tried again while a fresh Ray's job server has no agent yet."""

    def call(**kwargs) -> str:
        until = time.monotonic() + timeout_s
        while True:
            try:
                return submit_job(**kwargs)
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() >= until:
                    raise
                time.sleep(1.0)

    return call


def failure(jobs_client, job_id: str, what: str) -> TrainingJobFailed:
    """TrainingJobFailed saying `what` happened to the job, with its log's tail."""
    try:
        logs = tail(jobs_client.get_job_logs(job_id))
    except Exception as exc:  # noqa: BLE001 - the reason matters more than the logs
        logs = f"(no logs: {exc!r})"
    return TrainingJobFailed(f"training job {job_id} {what}; its log ends:\n{logs}")


def wait(jobs_client, job_id: str, deadline_s: float, poll_s: float) -> None:
    """Until the job succeeds; TrainingJobFailed when it fails, is stopped, or outlives
    `deadline_s` (then it is stopped first)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            info = jobs_client.get_job_info(job_id)
        except (ConnectionError, OSError) as exc:
            raise TrainingJobFailed(
                f"training job {job_id}: the job server is gone: {exc}"
            ) from None
        status = str(getattr(info.status, "value", info.status))
        if status == "SUCCEEDED":
            return
        if status in TERMINAL:
            raise failure(jobs_client, job_id, f"ended {status}: {info.message or 'no message'}")
        if time.monotonic() >= deadline:
            jobs_client.stop_job(job_id)
            until = time.monotonic() + STOP_WAIT_S
            while str(jobs_client.get_job_status(job_id)) not in TERMINAL:
                if time.monotonic() >= until:
                    break
                time.sleep(poll_s)
            raise failure(
                jobs_client,
                job_id,
                f"was {status} past its deadline of {deadline_s:g} s and was stopped",
            )
        time.sleep(poll_s)


def train_as_job(
    task: TaskSpec,
    train: TrainingSet,
    settings: Settings,
    *,
    metadata: dict[str, str] | None = None,
    **kwargs,
) -> Candidate:
    """`train_specialist(task.name, train, task.training, **kwargs)` as a Ray job (see the
    module docstring); `kwargs` must be JSON-able (NumPy arrays become lists)."""
    jobs_client = client(settings)
    job_id = submit(task, train, settings, metadata or {}, kwargs, jobs_client)
    output = output_of(settings, job_id)
    _training[task.name] = (job_id, settings)
    try:
        deadline_s = task.training.deadline_s or settings.training_deadline_s
        wait(jobs_client, job_id, deadline_s, settings.training_poll_s)
        with tempfile.TemporaryDirectory(prefix="protege-job-output-") as tmp:
            candidate = read_candidate(download(output, Path(tmp)))
        log.info("%s: training job %s succeeded (%s)", task.name, job_id, candidate.family)
        return candidate
    finally:
        _training.pop(task.name, None)
        _delete(output)


def _delete(uri: str) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(uri).delete_artifacts()
    except Exception as exc:  # noqa: BLE001 - a job that wrote nothing leaves nothing
        log.debug("nothing to delete at %s: %r", uri, exc)


def cancel_training(task_name: str) -> bool:
    """Stop the task's training job, if a round waits for one (an abandoned round)."""
    waiting = _training.get(task_name)
    if waiting is None:
        return False
    job_id, settings = waiting
    try:
        stop_job(settings, job_id)
    except Exception as exc:  # noqa: BLE001 - the cluster may be gone: nothing left to stop
        log.warning("%s: could not stop training job %s: %r", task_name, job_id, exc)
    return True


# Families that load the foundation model to train: a training job's process may, the
# improver's own never does (it asks the deployment's FM for answers instead).
FM_FAMILIES = frozenset({"lora"})


class TrainingNeedsJob(RuntimeError):
    """The task's families include one that trains the FM, and no training job can run."""


def train_candidate(
    task: TaskSpec,
    train: TrainingSet,
    *,
    validation: Validation | None = None,
    use_ray: bool = False,
    settings: Settings | None = None,
    metadata: dict[str, str] | None = None,
    progress: bool = False,
    **kwargs,
) -> Candidate:
    """Distill `train` into the task's specialist families, as a Ray job (`use_ray`) or
    here; the family is chosen on `validation` (texts, labels) when given (see
    `train_specialist`, which gets `kwargs` too). A family that trains the FM runs
    only as a job: here it fails the round, saying so (TrainingNeedsJob)."""
    fm_families = sorted(FM_FAMILIES & set(task.training.families))
    if fm_families and not use_ray:
        raise TrainingNeedsJob(
            f"{task.name}: the {', '.join(fm_families)} family trains the foundation model, "
            "which only a training job loads (the improver's process never does): give the "
            "improver a Ray job server (PROTEGE_RAY_DASHBOARD_URL; PROTEGE_IMPROVER_RAY=auto "
            "or always) or drop the family from training.families"
        )
    if use_ray:
        return train_as_job(
            task,
            train,
            settings or Settings(),
            metadata=metadata,
            validation=validation,
            progress=progress,
            **kwargs,
        )
    return train_specialist(
        task.name, train, task.training, validation, progress=progress, **kwargs
    )


def should_use_ray(task: TaskSpec, settings: Settings) -> bool:
    """A Ray job when asked (`improver_ray`), or, on `auto`, when a Ray is known (a
    dashboard URL in the settings or RAY_API_SERVER_ADDRESS, RAY_ADDRESS, or a Ray this
    process is connected to), its job server answers, and either the task wants GPUs
    (only Ray has them; an autoscaler may still be adding them) or its CPUs are free
    now (a CPU request that cannot be placed would wait behind Serve's replicas until
    its deadline). Otherwise in-process, saying why."""
    if settings.improver_ray != "auto":
        return settings.improver_ray == "always"
    try:
        import ray
    except ImportError:
        return False
    known = settings.ray_dashboard_url or os.environ.get(API_SERVER_ENV)
    if not (known or ray.is_initialized() or os.environ.get("RAY_ADDRESS")):
        return False
    try:
        free = free_cpus(settings)
    except JobsUnavailable as exc:
        log.warning("%s: training in-process: %s", task.name, exc)
        return False
    if (
        task.training.num_gpus > 0
        or FM_FAMILIES & set(task.training.families)  # only a job can train those
        or free is None
        or free >= task.training.num_cpus
    ):
        return True
    log.info(
        "%s: %.1f free Ray CPUs < %.1f asked: training in-process",
        task.name,
        free,
        task.training.num_cpus,
    )
    return False
