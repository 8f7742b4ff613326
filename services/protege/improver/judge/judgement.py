"""Judge a candidate on the exam: evaluate it, the champion and the FM side by side,
calibrate the candidate's cascade threshold, and apply the gate.

Everything here is plain functions over model folders and arrays; the loop fetches
the champion and records the judgement.

>>> judgement = judge(task, candidate_folder, exam, champion)   # doctest: +SKIP
>>> judgement.decision.passed, judgement.table()                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protege.artifact import SpecialistLoadError
from protege.improver.judge.calibrate import CascadeCalibration, calibrate_threshold
from protege.improver.judge.evaluate import (
    Evaluation,
    Metrics,
    evaluate_specialist,
    score,
    side_by_side,
)
from protege.improver.judge.exam import Exam
from protege.improver.judge.gate import GateDecision, decide
from protege.improver.training.dataset import label_indices
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    """The model serving the task now: its version, and its folder when it could be fetched."""

    version: str
    folder: Path | None = None
    problem: str | None = None  # why it could not be fetched or evaluated


@dataclass(frozen=True)
class Judgement:
    candidate: Evaluation
    champion: Evaluation | None
    champion_version: str | None
    champion_problem: str | None
    foundation: Metrics | None
    calibration: CascadeCalibration | None
    decision: GateDecision

    @property
    def metrics(self) -> dict[str, Metrics | None]:
        return {
            "candidate": self.candidate.metrics,
            "champion": self.champion.metrics if self.champion else None,
            "foundation": self.foundation,
        }

    def table(self) -> str:
        return side_by_side(self.metrics)

    def flat_metrics(self) -> dict[str, float]:
        """Every number, for the registry's run."""
        flat = dict(self.candidate.metrics.flat())
        if self.champion:
            flat.update(self.champion.metrics.flat("champion."))
        if self.foundation:
            flat.update(self.foundation.flat("foundation."))
        if self.calibration:
            flat.update(
                {
                    "cascade.threshold": self.calibration.threshold,
                    "cascade.accuracy": self.calibration.cascade_accuracy,
                    "cascade.specialist_share": self.calibration.specialist_share,
                }
            )
        flat.update(
            {f"gate.{k}": v for k, v in self.decision.metrics().items() if isinstance(v, float)}
        )
        return flat

    def headline(self) -> dict[str, float | str | None]:
        """The figures a ModelEvent carries."""
        return {
            "accuracy": self.candidate.metrics.accuracy,
            "macro_f1": self.candidate.metrics.macro_f1,
            "ece": self.candidate.metrics.ece,
            "p50_latency_ms": self.candidate.metrics.p50_latency_ms,
            "champion_accuracy": self.champion.metrics.accuracy if self.champion else None,
            "foundation_accuracy": self.foundation.accuracy if self.foundation else None,
            "threshold": self.calibration.threshold if self.calibration else None,
            **self.decision.metrics(),
        }

    def report(self, task: TaskSpec) -> dict:
        """The whole judgement, JSON-ready, for the registry's run."""
        return {
            "metrics": {k: (m.to_dict() if m else None) for k, m in self.metrics.items()},
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "gate": {
                "passed": self.decision.passed,
                "reasons": self.decision.reasons,
                "gain": self.decision.gain,
                "p_value": self.decision.p_value,
                "class_drops": self.decision.class_drops,
                "spec": task.gate.model_dump(),
            },
            "champion_version": self.champion_version,
            "champion_problem": self.champion_problem,
        }

    def reasons(self) -> list[str]:
        """Why the candidate was promoted or rejected, in words."""
        if not self.decision.passed:
            return list(self.decision.reasons)
        gain = self.decision.gain
        reasons = [
            f"passed the gate: accuracy {self.candidate.metrics.accuracy:.4f}"
            + (
                f", gain {gain:+.4f} (p = {self.decision.p_value:.4g}) over "
                f"version {self.champion_version}"
                if gain is not None
                else " (no champion to beat)"
            )
        ]
        if self.champion_problem:
            reasons.append(self.champion_problem)
        return reasons


def evaluate_champion(
    champion: Champion | None, task: TaskSpec, texts: list[str], gold: np.ndarray
) -> tuple[Evaluation | None, str | None]:
    """(evaluation, problem). A champion that cannot load is no obstacle: the candidate
    then only has to clear the absolute checks."""
    if champion is None:
        return None, None
    if champion.folder is None:
        return None, champion.problem
    try:
        return evaluate_specialist(champion.folder, texts, gold, task.label_names), None
    except (SpecialistLoadError, OSError) as exc:
        log.warning(
            "%s: champion version %s cannot be evaluated: %s", task.name, champion.version, exc
        )
        return None, f"champion version {champion.version} cannot be evaluated: {exc}"


def judge(
    task: TaskSpec, candidate_folder: Path, exam: Exam, champion: Champion | None
) -> Judgement:
    """Evaluate, calibrate and gate the candidate in `candidate_folder` on `exam`."""
    labels = task.label_names
    gold = label_indices(labels, exam.labels)
    candidate = evaluate_specialist(candidate_folder, exam.texts, gold, labels)
    champ, problem = evaluate_champion(champion, task, exam.texts, gold)
    fm_probs, fm_rows = exam.foundation_rows(task.retrain.fm_calibration_min)
    foundation = calibration = None
    if fm_probs is not None:
        foundation = score(fm_probs, gold[fm_rows], labels)
        calibration = calibrate_threshold(
            candidate.probabilities[fm_rows],
            fm_probs,
            gold[fm_rows],
            task.gate.cascade_target_accuracy,
        )
    decision = decide(
        task.gate,
        candidate.metrics,
        candidate.predicted == gold,
        champ.metrics if champ else None,
        (champ.predicted == gold) if champ else None,
        seed=task.training.seed,
    )
    judgement = Judgement(
        candidate,
        champ,
        champion.version if champion else None,
        problem,
        foundation,
        calibration,
        decision,
    )
    log.info("%s: gold evaluation\n%s", task.name, judgement.table())
    return judgement
