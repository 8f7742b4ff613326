"""Judge a candidate on the exam: evaluate it, the champion, the trivial answers (the
majority class, the reviews-only model, the FM) side by side, calibrate the
candidate's cascade threshold on the calibration set, and apply the gate.

Everything here is plain functions over model folders and arrays; the loop fetches
the champion, trains the reviews-only model and records the judgement.

>>> judgement = judge(task, candidate_folder, exam, champion)   # doctest: +SKIP
>>> judgement.decision.passed, judgement.table()                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protege.artifact import SpecialistLoadError, adapter_name, is_adapter
from protege.foundation.backend import Adapter
from protege.improver.judge.calibrate import CascadeCalibration, calibrate_threshold
from protege.improver.judge.evaluate import (
    Evaluation,
    Metrics,
    evaluate_specialist,
    score,
    side_by_side,
)
from protege.improver.judge.exam import Exam
from protege.improver.judge.gate import GateDecision, Rival, decide
from protege.improver.judge.spending import ExamUse
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
    foundation: Metrics | None  # on the exam rows with an FM answer
    calibration: CascadeCalibration | None
    decision: GateDecision
    majority: Metrics | None = None
    majority_label: str | None = None
    reviews_only: Evaluation | None = None
    exam_rows: int = 0
    calibration_rows: int = 0  # calibration rows with an FM answer
    use: ExamUse | None = None
    notes: list[str] = field(default_factory=list)  # what was left out, and why

    @property
    def metrics(self) -> dict[str, Metrics | None]:
        return {
            "candidate": self.candidate.metrics,
            "champion": self.champion.metrics if self.champion else None,
            "reviews_only": self.reviews_only.metrics if self.reviews_only else None,
            "majority": self.majority,
            "foundation": self.foundation,
        }

    def table(self) -> str:
        return side_by_side(self.metrics)

    def flat_metrics(self) -> dict[str, float]:
        """Every number, for the registry's run."""
        flat = dict(self.candidate.metrics.flat())
        for name, m in self.metrics.items():
            if name != "candidate" and m is not None:
                flat.update(m.flat(f"{name}."))
        if self.calibration:
            flat.update(
                {
                    "cascade.threshold": self.calibration.threshold,
                    "cascade.accuracy": self.calibration.cascade_accuracy,
                    "cascade.specialist_share": self.calibration.specialist_share,
                    "cascade.rows": float(self.calibration_rows),
                }
            )
        flat.update(
            {
                f"gate.{k}": v
                for k, v in self.decision.metrics().items()
                if isinstance(v, float) and v == v  # NaN: nothing to log
            }
        )
        flat["exam.rows"] = float(self.exam_rows)
        if self.use is not None:
            flat.update(
                {
                    "exam.generation": float(self.use.generation),
                    "exam.decision": float(self.use.decision),
                }
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
            "majority_accuracy": self.majority.accuracy if self.majority else None,
            "reviews_only_accuracy": (
                self.reviews_only.metrics.accuracy if self.reviews_only else None
            ),
            "threshold": self.calibration.threshold if self.calibration else None,
            "exam_rows": float(self.exam_rows),
            "exam_generation": float(self.use.generation) if self.use else None,
            "exam_decision": float(self.use.decision) if self.use else None,
            **self.decision.metrics(),
        }

    def report(self, task: TaskSpec) -> dict:
        """The whole judgement, JSON-ready, for the registry's run."""
        return {
            "metrics": {k: (m.to_dict() if m else None) for k, m in self.metrics.items()},
            "majority_label": self.majority_label,
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "calibration_rows": self.calibration_rows,
            "gate": {**self.decision.to_dict(), "spec": task.gate.model_dump()},
            "exam": {
                "rows": self.exam_rows,
                "use": self.use.to_dict() if self.use else None,
                "spec": task.exam.model_dump(),
            },
            "notes": self.notes,
            "champion_version": self.champion_version,
            "champion_problem": self.champion_problem,
        }

    def reasons(self) -> list[str]:
        """Why the candidate was promoted or rejected, in words."""
        if not self.decision.passed:
            return list(self.decision.reasons) + self.notes
        low, high = self.decision.accuracy_interval
        beaten = ", ".join(
            f"the {c.rival.replace('_', '-')} {c.rival_accuracy:.4f} "
            f"(gain {c.gain:+.4f}, CI [{c.gain_interval[0]:+.3f}, {c.gain_interval[1]:+.3f}], "
            f"p = {c.p_value:.3g})"
            for c in self.decision.comparisons
        )
        versus = f"version {self.champion_version}" if self.champion else "the trivial answers"
        return (
            [
                f"passed the gate: accuracy {self.candidate.metrics.accuracy:.4f} "
                f"(CI [{low:.3f}, {high:.3f}], {self.exam_rows} exam rows) beats {versus} at "
                f"alpha {self.decision.alpha:.4g}: {beaten}"
            ]
            + ([self.champion_problem] if self.champion_problem else [])
            + self.notes
        )


def evaluate_champion(
    champion: Champion | None, task: TaskSpec, texts: list[str], gold: np.ndarray, fm=None
) -> tuple[Evaluation | None, str | None]:
    """(evaluation, problem). A champion that cannot load is no obstacle: the candidate
    then has to beat the trivial answers, as a first candidate does. An fm-adapter
    champion is asked through `fm` (a foundation backend, e.g. the FM deployment's
    client) by its served name; without one it cannot be evaluated."""
    if champion is None:
        return None, None
    if champion.folder is None:
        return None, champion.problem
    try:
        if is_adapter(champion.folder):
            return evaluate_adapter(champion, task, texts, gold, fm)
        return evaluate_specialist(champion.folder, texts, gold, task.label_names), None
    except (SpecialistLoadError, OSError) as exc:
        log.warning(
            "%s: champion version %s cannot be evaluated: %s", task.name, champion.version, exc
        )
        return None, f"champion version {champion.version} cannot be evaluated: {exc}"


def evaluate_adapter(
    champion: Champion, task: TaskSpec, texts: list[str], gold: np.ndarray, fm
) -> tuple[Evaluation | None, str | None]:
    """An fm-adapter champion's answers from the FM with its adapter (latency not
    measured: the FM's, not a specialist's). `fm` may be a zero-argument factory of the
    backend, called only here."""
    if callable(fm) and not hasattr(fm, "predict_proba"):
        fm = fm()
    if fm is None:
        return None, (
            f"champion version {champion.version} is an FM adapter and no FM was given to score it"
        )
    adapter = Adapter(adapter_name(task.name, champion.version), champion.folder)
    probs = fm.predict_proba(task, list(texts), adapter=adapter)
    return Evaluation(score(probs, gold, task.label_names), probs), None


def majority_answer(task: TaskSpec, gold: np.ndarray) -> tuple[str, Metrics, Rival]:
    """Always the exam's most common label: the strongest constant answer, chosen on the
    exam itself (which can only flatter it)."""
    label = int(np.bincount(gold, minlength=len(task.labels)).argmax())
    answers = np.full(len(gold), label)
    return (
        task.label_names[label],
        score(answers, gold, task.label_names),
        Rival("majority", answers == gold),
    )


def calibrate(
    task: TaskSpec, candidate_folder: Path, exam: Exam
) -> tuple[CascadeCalibration | None, int, str | None]:
    """(calibration, rows, note): the cascade threshold from the calibration set's rows
    with an FM answer, or None and why when there are too few of them."""
    held = exam.calibration
    rows = len(held.foundation.rows) if held is not None else 0
    need = task.exam.min_calibration_rows
    if held is None or rows < need:
        return (
            None,
            rows,
            f"cascade threshold not calibrated: {rows} calibration rows with an FM answer "
            f"(< exam.min_calibration_rows = {need}); the configured "
            f"{task.routing.threshold} stays",
        )
    fm_probs, fm_rows = held.foundation.probabilities, held.foundation.rows
    texts = [held.texts[i] for i in fm_rows]
    gold = label_indices(task.label_names, [held.labels[i] for i in fm_rows])
    evaluation = evaluate_specialist(
        candidate_folder, texts, gold, task.label_names, latency_samples=0
    )
    calibration = calibrate_threshold(
        evaluation.probabilities, fm_probs, gold, task.gate.cascade_target_accuracy
    )
    return calibration, rows, None


def judge(
    task: TaskSpec,
    candidate_folder: Path,
    exam: Exam,
    champion: Champion | None,
    *,
    reviews_only: Path | None = None,
    reviews_only_problem: str | None = None,
    use: ExamUse | None = None,
    fm=None,
) -> Judgement:
    """Evaluate, calibrate and gate the candidate in `candidate_folder` on `exam`.

    `reviews_only` is the folder of the round's reviews-only model (or
    `reviews_only_problem` says why there is none); `use` places the decision in its
    exam generation's significance budget (default: the full `gate.significance`);
    `fm` (a backend or a factory of one) scores an fm-adapter champion (None: such a
    champion is not evaluated, and the judgement says why)."""
    labels = task.label_names
    gold = label_indices(labels, exam.labels)
    notes: list[str] = []
    candidate = evaluate_specialist(candidate_folder, exam.texts, gold, labels)
    champ, problem = evaluate_champion(champion, task, exam.texts, gold, fm)

    majority_label, majority, majority_rival = majority_answer(task, gold)
    baselines = [majority_rival]
    reviews_eval = None
    if reviews_only is not None:
        reviews_eval = evaluate_specialist(
            reviews_only, exam.texts, gold, labels, latency_samples=0
        )
        baselines.append(Rival("reviews_only", reviews_eval.predicted == gold))
    else:
        notes.append(f"no reviews-only model: {reviews_only_problem or 'not trained'}")
    foundation = None
    fm_probs, fm_rows = exam.foundation_rows(task.exam.min_foundation_rows)
    if fm_probs is not None:
        foundation = score(fm_probs, gold[fm_rows], labels)
        baselines.append(Rival("foundation", fm_probs.argmax(axis=1) == gold[fm_rows], fm_rows))
    else:
        notes.append(
            f"FM not compared: {len(exam.foundation.rows)} exam rows with an FM answer "
            f"(< exam.min_foundation_rows = {task.exam.min_foundation_rows})"
        )
    calibration, calibration_rows, note = calibrate(task, candidate_folder, exam)
    if note:
        notes.append(note)

    decision = decide(
        task.gate,
        labels,
        gold,
        candidate.predicted == gold,
        champion=Rival("champion", champ.predicted == gold) if champ else None,
        baselines=baselines,
        alpha=use.alpha if use else None,
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
        majority=majority,
        majority_label=majority_label,
        reviews_only=reviews_eval,
        exam_rows=len(exam),
        calibration_rows=calibration_rows,
        use=use,
        notes=notes,
    )
    log.info("%s: gold evaluation\n%s", task.name, judgement.table())
    return judgement
