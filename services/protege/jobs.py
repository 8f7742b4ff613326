"""Protégé's training jobs on Ray's Jobs API: find the job server, list, read and stop the
jobs the improver submitted. Both the improver (which submits and waits) and serving (the
admin endpoints) use this module; neither imports the other.

A training job is a Ray job whose metadata says `protege: training`, with `task`, `round`
(when its round started), `trigger` and `holder` (the round's lease holder). Other jobs on
the same cluster are not Protégé's: they are neither listed nor stopped here.

>>> [j.task for j in list_jobs(settings)]                      # doctest: +SKIP
['youtube-spam']
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

from protege.settings import Settings

log = logging.getLogger(__name__)

KIND_KEY, KIND = "protege", "training"  # the metadata that marks a training job
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"  # Ray's own variable for the Jobs API address
JOB_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"  # what ids look like; nothing else reaches Ray
JOB_ID = re.compile(JOB_ID_PATTERN)
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
_env_lock = threading.Lock()


class JobsUnavailable(RuntimeError):
    """Ray's job server cannot be reached (no Ray, no dashboard): the message says where."""


class UnknownJob(LookupError):
    """No Protégé training job has this id."""


@dataclass(frozen=True)
class TrainingJob:
    """One training job as Ray's job server reports it."""

    id: str
    task: str
    round: str
    trigger: str
    holder: str
    status: str  # PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED
    message: str
    start_time: float | None  # seconds since the epoch
    end_time: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def dashboard_url(settings: Settings) -> str:
    """The Jobs API's address: the settings', Ray's RAY_API_SERVER_ADDRESS, the dashboard of
    the Ray this process is connected to (a Serve replica, `protege up`), or the default."""
    if settings.ray_dashboard_url:
        return settings.ray_dashboard_url.rstrip("/")
    if os.environ.get(API_SERVER_ENV):
        return os.environ[API_SERVER_ENV].rstrip("/")
    return connected_dashboard() or DEFAULT_DASHBOARD


def connected_dashboard() -> str | None:
    """The dashboard of the Ray this process is connected to, read from its GCS."""
    try:
        import ray
        from ray._private import ray_constants
        from ray.experimental import internal_kv

        if not ray.is_initialized():
            return None
        url = internal_kv._internal_kv_get(
            ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD
        )
    except Exception as exc:  # noqa: BLE001 - a broken connection: fall back to the default
        log.debug("no dashboard address from the connected Ray: %r", exc)
        return None
    return f"http://{url.decode()}" if url else None


def dashboard_port(settings: Settings) -> int | None:
    """The port to start a local Ray's dashboard on: the settings' URL's, when it is local."""
    url = urlparse(settings.ray_dashboard_url or "")
    return url.port if url.hostname in ("127.0.0.1", "localhost") else None


def checked(job_id: str) -> str:
    """`job_id` when it looks like a job id (nothing else goes into Ray's URLs)."""
    if not JOB_ID.fullmatch(job_id):
        raise UnknownJob(f"{job_id[:100]!r} is not a job id")
    return job_id


def client(settings: Settings, job_id: str | None = None):
    """A JobSubmissionClient at `dashboard_url`; JobsUnavailable when nothing answers there,
    UnknownJob for a `job_id` that no job could have (before any request)."""
    from ray.job_submission import JobSubmissionClient

    if job_id is not None:
        checked(job_id)

    url = dashboard_url(settings)
    # Ray lets RAY_ADDRESS (the improver's Ray Client address) override the address
    # argument, unless RAY_API_SERVER_ADDRESS is set: set it to ours while constructing.
    with _env_lock:
        previous = os.environ.get(API_SERVER_ENV)
        os.environ[API_SERVER_ENV] = url
        try:
            return JobSubmissionClient(url)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise JobsUnavailable(f"Ray's job server at {url} does not answer: {exc}") from None
        finally:
            if previous is None:
                os.environ.pop(API_SERVER_ENV, None)
            else:
                os.environ[API_SERVER_ENV] = previous


def free_cpus(settings: Settings, timeout_s: float = 5.0) -> float | None:
    """The CPUs no task or actor holds on the cluster now, from its dashboard's status;
    None when it does not say (yet). JobsUnavailable when nothing answers."""
    import httpx

    url = dashboard_url(settings)
    try:
        answer = httpx.get(f"{url}/api/cluster_status", params={"format": "0"}, timeout=timeout_s)
        answer.raise_for_status()
        status = answer.json()["data"]["clusterStatus"] or {}
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise JobsUnavailable(f"Ray's dashboard at {url} does not answer: {exc}") from None
    used, total = (status.get("loadMetricsReport") or {}).get("usage", {}).get("CPU", (0, 0))
    return float(total) - float(used) if total else None


def _job(details) -> TrainingJob | None:
    meta = details.metadata or {}
    if meta.get(KIND_KEY) != KIND or not details.submission_id:
        return None
    return TrainingJob(
        id=details.submission_id,
        task=meta.get("task", ""),
        round=meta.get("round", ""),
        trigger=meta.get("trigger", ""),
        holder=meta.get("holder", ""),
        status=str(getattr(details.status, "value", details.status)),
        message=details.message or "",
        start_time=details.start_time / 1000 if details.start_time else None,
        end_time=details.end_time / 1000 if details.end_time else None,
    )


def _call(jobs_client, method: str, *args):
    """`jobs_client.method(*args)`, a lost connection as JobsUnavailable."""
    try:
        return getattr(jobs_client, method)(*args)
    except (ConnectionError, OSError) as exc:
        where = getattr(jobs_client, "_address", "?")
        raise JobsUnavailable(f"Ray's job server at {where} does not answer: {exc}") from None


def list_jobs(settings: Settings, task: str | None = None) -> list[TrainingJob]:
    """Protégé's training jobs (of `task`, when given), newest first."""
    jobs_client = client(settings)
    details = _call(jobs_client, "list_jobs")
    jobs = [j for j in map(_job, details) if j and (task is None or j.task == task)]
    return sorted(jobs, key=lambda j: j.start_time or 0.0, reverse=True)


def get_job(settings: Settings, job_id: str, jobs_client=None) -> TrainingJob:
    """The training job `job_id`; UnknownJob for any other id."""
    checked(job_id)
    jobs_client = jobs_client or client(settings)
    try:
        details = _call(jobs_client, "get_job_info", job_id)
    except RuntimeError as exc:  # the job server's answer was not a 200
        if "status code 404" in str(exc):
            raise UnknownJob(f"no training job {job_id!r}") from None
        raise JobsUnavailable(f"Ray's job server: {exc}") from None
    job = _job(details)
    if job is None:
        raise UnknownJob(f"{job_id!r} is not a Protégé training job")
    return job


def job_logs(settings: Settings, job_id: str) -> str:
    """The job's whole log (its entrypoint's stdout and stderr)."""
    jobs_client = client(settings, job_id)
    get_job(settings, job_id, jobs_client)
    return _call(jobs_client, "get_job_logs", job_id)


def stop_job(settings: Settings, job_id: str) -> TrainingJob:
    """Ask Ray to stop the job (SIGTERM, then SIGKILL); returns the job as it was. Its
    round, waiting on it, then fails."""
    jobs_client = client(settings, job_id)
    job = get_job(settings, job_id, jobs_client)
    if job.status not in TERMINAL:
        _call(jobs_client, "stop_job", job_id)
    return job


def tail(text: str, lines: int = 20) -> str:
    """The last `lines` lines of a log, for error messages."""
    return "\n".join(text.rstrip().splitlines()[-lines:])
