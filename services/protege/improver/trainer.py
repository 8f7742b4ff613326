"""A training round: distill (as a Ray task) -> evaluate -> calibrate -> gate -> register.

Ray appears only in `train_on_ray`, a thin wrapper that runs
`training.train_specialist` with the task's resource request, so that on a
cluster it lands on a GPU worker when `training.num_gpus > 0`. The specialist
comes back as bytes and is written, evaluated and registered here, on the
improver's machine. Everything else is plain functions that tests call directly.

>>> result = run_round(task, train, gold_test, registry, fm_test_predictions=fm_probs,
...                    publish=producer.publish)               # doctest: +SKIP
>>> result.decision.passed, result.event.action               # doctest: +SKIP
(True, <ModelAction.promoted: 'promoted'>)
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from protege.config import TaskSpec
from protege.improver.calibrate import CascadeCalibration, calibrate_threshold
from protege.improver.evaluate import Evaluation, Metrics, evaluate_specialist, score, side_by_side
from protege.improver.export import update_meta
from protege.improver.gate import GateDecision, decide
from protege.improver.training import Candidate, TrainingSet, label_indices, train_specialist
from protege.registry import CHAMPION, Publish, Registry, RegistryError
from protege.schemas import ModelEvent
from protege.serving.specialist import SpecialistLoadError

log = logging.getLogger(__name__)


class TrainingInProgress(RuntimeError):
    """A round for this task is already running in this process."""


_task_locks: dict[str, threading.Lock] = {}
_task_locks_guard = threading.Lock()


def _lock_for(task: str) -> threading.Lock:
    with _task_locks_guard:
        return _task_locks.setdefault(task, threading.Lock())


# --------------------------------------------------------------------------- Ray


@cache
def _remote_train():
    import ray

    return ray.remote(train_specialist)


def train_on_ray(task: TaskSpec, train: TrainingSet,
                 validation: tuple[Sequence[str], Sequence] | None = None,
                 *, progress: bool = True) -> Candidate:
    """`train_specialist` as a Ray task with the task's `training.num_gpus`/`num_cpus`.

    Uses the running Ray (the Serve cluster, `ray.init(address=...)`); starts a local
    one when there is none, as any Ray call does."""
    import ray

    spec = task.training
    ref = _remote_train().options(
        num_gpus=spec.num_gpus, num_cpus=spec.num_cpus, name=f"train-{task.name}",
    ).remote(task.name, train, spec, validation, progress=progress)
    return ray.get(ref)


# --------------------------------------------------------------------------- a round


@dataclass(frozen=True)
class RoundResult:
    task: str
    version: str  # in the registry
    candidate: Candidate
    metrics: dict[str, Metrics | None]  # "candidate", "champion", "foundation"
    calibration: CascadeCalibration | None
    decision: GateDecision
    event: ModelEvent  # promoted or rejected
    champion_version: str | None  # the champion it was compared with

    def table(self) -> str:
        return side_by_side(self.metrics)


def _evaluate_champion(registry: Registry, task: TaskSpec, texts: list[str],
                       gold: np.ndarray) -> tuple[str | None, Evaluation | None, str | None]:
    """(version, evaluation, problem). A champion that cannot load is no obstacle:
    the candidate then only has to clear the absolute checks."""
    version = registry.alias_version(task.name, CHAMPION)
    if version is None:
        return None, None, None
    try:
        folder = registry.download(task.name, version=version)
        return version, evaluate_specialist(folder, texts, gold, task.label_names), None
    except (RegistryError, SpecialistLoadError, OSError) as exc:
        log.warning("%s: champion version %s cannot be evaluated: %s", task.name, version, exc)
        return version, None, f"champion version {version} cannot be evaluated: {exc}"


def run_round(
    task: TaskSpec,
    train: TrainingSet,
    gold_test: tuple[Sequence[str], Sequence],
    registry: Registry,
    *,
    validation: tuple[Sequence[str], Sequence] | None = None,
    fm_test_predictions: np.ndarray | None = None,
    fm_rows: Sequence[int] | None = None,
    lf_report: Mapping | None = None,
    label_model: str | Mapping | None = None,
    publish: Publish | None = None,
    use_ray: bool = True,
    progress: bool = True,
) -> RoundResult:
    """Train a candidate, evaluate it against the champion and the FM on `gold_test`
    (texts, labels), calibrate its cascade threshold, gate it, register it, and promote
    or reject it. Returns everything that was decided; `publish` gets the ModelEvent.

    `fm_test_predictions` are the FM's probabilities [N, C] (or label indices) on the
    same gold texts; without them the cascade threshold is not calibrated. With
    `fm_rows` they cover only those rows of `gold_test` (the FM is too slow on CPU to
    score all of them): the FM is scored and the threshold calibrated on those rows."""
    lock = _lock_for(task.name)
    if not lock.acquire(blocking=False):
        raise TrainingInProgress(f"{task.name}: a training round is already running")
    try:
        return _run_round(task, train, gold_test, registry, validation, fm_test_predictions,
                          fm_rows, lf_report, label_model, publish, use_ray, progress)
    finally:
        lock.release()


def _run_round(task, train, gold_test, registry, validation, fm_test_predictions, fm_rows,
               lf_report, label_model, publish, use_ray, progress) -> RoundResult:
    labels = task.label_names
    if list(train.labels) != labels:
        raise ValueError(f"training labels {train.labels} differ from the task's {labels}")
    texts, gold = list(gold_test[0]), label_indices(labels, gold_test[1])
    if use_ray:
        candidate = train_on_ray(task, train, validation, progress=progress)
    else:
        candidate = train_specialist(task.name, train, task.training, validation,
                                     progress=progress)

    with tempfile.TemporaryDirectory(prefix=f"protege-{task.name}-") as tmp:
        folder = candidate.write(Path(tmp) / "candidate")
        cand = evaluate_specialist(folder, texts, gold, labels)
        champion_version, champ, champion_problem = _evaluate_champion(registry, task, texts,
                                                                       gold)
        rows = np.arange(len(gold)) if fm_rows is None else np.asarray(fm_rows, dtype=np.int64)
        fm = None if fm_test_predictions is None else score(fm_test_predictions, gold[rows],
                                                            labels)

        calibration = None
        if fm_test_predictions is not None:
            calibration = calibrate_threshold(cand.probabilities[rows], fm_test_predictions,
                                              gold[rows], task.gate.cascade_target_accuracy)
            update_meta(folder, threshold=calibration.threshold)

        decision = decide(
            task.gate, cand.metrics, cand.predicted == gold,
            champ.metrics if champ else None, (champ.predicted == gold) if champ else None,
            seed=task.training.seed,
        )
        metrics = {"candidate": cand.metrics, "champion": champ.metrics if champ else None,
                   "foundation": fm}
        log.info("%s: gold evaluation\n%s", task.name, side_by_side(metrics))

        flat = {**cand.metrics.flat(), **{f"validation.{k}": v for k, v in
                                          candidate.validation_accuracy.items()}}
        if champ:
            flat.update(champ.metrics.flat("champion."))
        if fm:
            flat.update(fm.flat("foundation."))
        if calibration:
            flat.update({"cascade.threshold": calibration.threshold,
                         "cascade.accuracy": calibration.cascade_accuracy,
                         "cascade.specialist_share": calibration.specialist_share})
        flat.update({f"gate.{k}": v for k, v in decision.metrics().items()
                     if isinstance(v, float)})
        flat.update({f"train_seconds.{k}": v for k, v in candidate.train_seconds.items()})
        report = {
            "metrics": {k: (m.to_dict() if m else None) for k, m in metrics.items()},
            "calibration": calibration.to_dict() if calibration else None,
            "gate": {"passed": decision.passed, "reasons": decision.reasons,
                     "gain": decision.gain, "p_value": decision.p_value,
                     "class_drops": decision.class_drops, "spec": task.gate.model_dump()},
            "champion_version": champion_version, "champion_problem": champion_problem,
            "validation_accuracy": candidate.validation_accuracy,
        }
        version = registry.log_candidate(
            task.name, folder, params=candidate.params, metrics=flat, lf_report=lf_report,
            label_model=label_model, report=report,
        )

    headline: dict[str, float | str | None] = {
        "accuracy": cand.metrics.accuracy, "macro_f1": cand.metrics.macro_f1,
        "ece": cand.metrics.ece, "p50_latency_ms": cand.metrics.p50_latency_ms,
        "champion_accuracy": champ.metrics.accuracy if champ else None,
        "foundation_accuracy": fm.accuracy if fm else None,
        "threshold": calibration.threshold if calibration else None,
        **decision.metrics(),
    }
    if decision.passed:
        reasons = [f"passed the gate: accuracy {cand.metrics.accuracy:.4f}"
                   + (f", gain {decision.gain:+.4f} (p = {decision.p_value:.4g}) over "
                      f"version {champion_version}" if decision.gain is not None else
                      " (no champion to beat)")]
        if champion_problem:
            reasons.append(champion_problem)
        event = registry.promote(task.name, version, reasons=reasons, metrics=headline,
                                 publish=publish)
    else:
        event = registry.reject(task.name, version, decision.reasons, metrics=headline,
                                publish=publish)
    log.info("%s: version %s %s: %s", task.name, version, event.action.value,
             "; ".join(event.reasons))
    return RoundResult(task.name, version, candidate, metrics, calibration, decision, event,
                       champion_version)
