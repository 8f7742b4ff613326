"""Where a round's training runs: in the improver's process, or as a Ray task with the
task's resource request (`training.num_gpus` / `num_cpus`), so that on a cluster it
lands on a GPU worker. The specialist comes back as bytes (`Candidate.files`) either way.

Ray appears only here; `distill.train_specialist` is plain Python that tests call.

The improver's Ray connection (Ray Client to `RAY_ADDRESS`, the RayService's head service)
outlives clusters: when a switch-over deletes the cluster behind it, the round that was
training fails (the round's lease is released as for any failure), the connection is shut
down, and the next round connects again (`connect`), to whichever cluster serves now.
"""

from __future__ import annotations

import logging
import os
from functools import cache

from protege.improver.training.dataset import TrainingSet
from protege.improver.training.distill import Candidate, Validation, train_specialist
from protege.settings import Settings
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)

# Each task's training on Ray while a round waits for it, so that an abandoned round's
# training can be cancelled (`cancel_training`) rather than left to run out.
_training: dict[str, object] = {}


@cache
def _remote_train():
    import ray

    return ray.remote(train_specialist)


def connect() -> None:
    """Connect this process to Ray (`RAY_ADDRESS`; a local Ray without it) unless it is;
    a connection whose cluster went away is shut down and opened again."""
    import ray

    if ray.is_initialized():
        try:
            ray.get(ray.put(None))  # through Ray Client's data channel: fails once it broke
            return
        except ConnectionError as exc:
            log.warning("Ray connection lost (%s); connecting again", exc)
    # Also when not initialized: a Ray Client session that broke by itself still blocks init.
    disconnect()
    ray.init(log_to_driver=False)


def disconnect() -> None:
    """Shut this process's Ray connection down; `connect` opens a new one."""
    import ray

    ray.shutdown()
    _remote_train.cache_clear()  # a remote function belongs to the connection that made it


def train_on_ray(
    task: TaskSpec,
    train: TrainingSet,
    *,
    validation: Validation | None = None,
    progress: bool = True,
) -> Candidate:
    """`train_specialist` as a Ray task with the task's `training.num_gpus`/`num_cpus`,
    on the cluster `connect` reaches. A lost connection (ConnectionError: the cluster
    went away) is shut down before the error goes up, so that the next call reconnects."""
    import ray

    connect()
    spec = task.training
    try:
        ref = (
            _remote_train()
            .options(
                num_gpus=spec.num_gpus,
                num_cpus=spec.num_cpus,
                name=f"train-{task.name}",
            )
            .remote(task.name, train, spec, validation, progress=progress)
        )
        _training[task.name] = ref
        return ray.get(ref)
    except ConnectionError:
        disconnect()
        raise
    finally:
        _training.pop(task.name, None)


def cancel_training(task_name: str) -> bool:
    """Cancel the task's training on Ray, if a round waits for one (an abandoned round)."""
    ref = _training.pop(task_name, None)
    if ref is None:
        return False
    import ray

    try:
        ray.cancel(ref, force=True)
    except Exception as exc:  # noqa: BLE001 - the cluster may be gone: nothing left to stop
        log.warning("%s: could not cancel the training task: %r", task_name, exc)
    return True


def train_candidate(
    task: TaskSpec,
    train: TrainingSet,
    *,
    validation: Validation | None = None,
    use_ray: bool = False,
    progress: bool = False,
) -> Candidate:
    """Distill `train` into the task's specialist families, here or on Ray; the family
    is chosen on `validation` (texts, labels) when given (see `train_specialist`)."""
    if use_ray:
        return train_on_ray(task, train, validation=validation, progress=progress)
    return train_specialist(task.name, train, task.training, validation, progress=progress)


def should_use_ray(task: TaskSpec, settings: Settings) -> bool:
    """Ray when asked (`improver_ray`), or, on `auto`, when connected to a cluster
    (RAY_ADDRESS or an initialized Ray) and either the task wants GPUs (only Ray has
    them; an autoscaler may still be adding them) or its CPUs are free right now (a
    CPU request that cannot be placed would wait behind Serve's replicas forever)."""
    if settings.improver_ray == "never":
        return False
    if settings.improver_ray == "always":
        return True
    try:
        import ray
    except ImportError:
        return False
    if not (ray.is_initialized() or os.environ.get("RAY_ADDRESS")):
        return False
    if task.training.num_gpus > 0:
        return True
    connect()
    free = ray.available_resources().get("CPU", 0.0)
    if free < task.training.num_cpus:
        log.info(
            "%s: %.1f free Ray CPUs < %.1f asked: training in-process",
            task.name,
            free,
            task.training.num_cpus,
        )
        return False
    return True
