"""One training round for a task, from the example store to a promoted or rejected
specialist: the loop's unit of work, run by `protege.improver.service` on its
triggers and by `protege improver round TASK` by hand. It reads top to bottom:

1. gather: the task's traffic and gold from the store (`data.examples`);
2. label: every labeling function votes, the label model combines the votes
   (`labeling.labeled`); prompt LFs score at most `retrain.prompt_lf_budget` new
   texts per round (their scores are cached, so coverage grows round by round);
3. set the exam: the trusted gold of the exam bucket (fixed by text hash, never
   trained on), the calibration bucket's, and the FM's answers on both, cheapest
   first (`judge.exam`); too small an exam skips the round, saying what it lacks;
4. train: distill into the task's specialist families, here or as a Ray job
   (`training.jobs`), the family chosen on the calibration bucket's trusted gold (the
   exam stays unseen), and the reviews-only model: the chosen family on the reviewed
   training rows alone, the trivial learner a first candidate must beat;
5. judge: the candidate, the champion and the trivial answers side by side on the
   exam, the cascade threshold calibrated on the calibration set, the gate applied at
   the level left in the exam's significance budget (`judge.judgement`,
   `judge.spending`);
6. decide: register the candidate in MLflow with everything above, then promote or
   reject it (a ModelEvent either way), and spend the decision's share of the budget.

One round at a time per task: the `RoundLedger` lease, across threads and processes.

>>> report = run_round(task, store, registry, settings, publish=producer.publish)  # doctest: +SKIP
>>> report.outcome, report.version                                               # doctest: +SKIP
('promoted', '3')
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from protege.artifact import update_meta
from protege.improver.data.examples import Examples, gather
from protege.improver.data.ledger import RoundLedger
from protege.improver.data.store import ExampleStore
from protege.improver.judge.exam import Exam, set_exam
from protege.improver.judge.judgement import Champion, Judgement, judge
from protege.improver.judge.spending import exam_use, record_decision
from protege.improver.labeling.analysis import lf_report
from protege.improver.labeling.functions import SOURCES
from protege.improver.labeling.label_model import LabelModelFit
from protege.improver.labeling.labeled import LabeledData, label_examples
from protege.improver.labeling.sources import default_model_name, task_lfs
from protege.improver.training.dataset import TrainingSet
from protege.improver.training.distill import Candidate, train_specialist
from protege.improver.training.jobs import should_use_ray, train_candidate
from protege.registry import CHAMPION, ChampionMoved, Publish, Registry, RegistryError
from protege.schemas import ModelEvent
from protege.settings import Settings
from protege.taskspec import TaskSpec

log = logging.getLogger(__name__)

Trainer = Callable[[TaskSpec, TrainingSet], Candidate]
# Fewer true labels than this choose a family worse than the training rows' hold-out.
MIN_FAMILY_VALIDATION_ROWS = 20


class NotReady(RuntimeError):
    """The store does not hold enough to train and judge a candidate; the message says what."""


class TrainingInProgress(RuntimeError):
    """Another round of this task holds the training lease."""


class LeaseLost(RuntimeError):
    """The round's lease was released under it (the improver abandoned the round on stop)
    or taken over (it outlived `improver_lease_s`): it must not register or promote."""


@dataclass
class RoundReport:
    """What a round did, whatever its outcome."""

    task: str
    trigger: str
    outcome: str  # promoted | rejected | skipped | failed
    version: str | None = None
    family: str | None = None  # the specialist family the candidate came from
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0
    judgement: Judgement | None = field(default=None, repr=False)
    foundation: dict | None = None  # FoundationAnswers.summary()
    data: dict = field(default_factory=dict)  # counts of what it trained on
    # The label model the round fitted, and the LF sources it was fitted on: the review
    # queue ranks with it until the next round.
    label_model: tuple[LabelModelFit, tuple[str, ...]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("judgement", "label_model")
        }
        if self.judgement is not None:
            out["metrics"] = {
                k: (m.to_dict() if m else None) for k, m in self.judgement.metrics.items()
            }
            calibration = self.judgement.calibration
            out["threshold"] = calibration.threshold if calibration else None
        return out


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def lazy_backend(settings: Settings) -> Callable[[], object]:
    """A zero-argument factory of the deployment's FM over HTTP (`foundation.remote`),
    made once, when a text must be scored: the improver never loads a model itself."""
    from protege.foundation.remote import RemoteFoundation

    return functools.cache(lambda: RemoteFoundation.from_settings(settings))


# --------------------------------------------------------------------------- the steps


def label(
    task: TaskSpec,
    examples: Examples,
    store: ExampleStore,
    backend,
    sources: Sequence[str],
    model_name: str,
) -> LabeledData:
    """Every LF of the task votes on every example; the label model combines them."""
    lfs = task_lfs(
        task,
        sources,
        backend=backend,
        cache=store,
        model_name=model_name,
        prompt_budget=task.retrain.prompt_lf_budget,
    )
    return label_examples(task, examples, lfs)


def training_set(task: TaskSpec, labeled: LabeledData) -> TrainingSet:
    """What the specialist learns from; NotReady when it covers fewer than two labels."""
    train = TrainingSet.from_labeled(labeled)
    present = len(set(train.targets.argmax(axis=1).tolist())) if len(train) else 0
    if present < 2:
        raise NotReady(
            f"{task.name}: {len(train)} training examples covering {present} "
            "label(s); need at least two labels"
        )
    return train


def exam_of(
    task: TaskSpec, store: ExampleStore, examples: Examples, backend, model_name: str
) -> Exam:
    """The exam and the calibration set, with the FM's answers; NotReady, naming the
    numbers, when the exam is too small for a decision."""
    exam = examples.exam_gold()
    if len(exam) < task.exam.min_rows:
        untrusted = sum(1 for g in examples.gold if g.split == "exam" and not g.trusted)
        raise NotReady(
            f"{task.name}: the exam has {len(exam)} trusted gold rows (< exam.min_rows = "
            f"{task.exam.min_rows}; {untrusted} more in the exam bucket have one untrusted "
            "reviewer's word): waiting for more trusted gold (imported with `protege gold "
            f"import`, reviewed with a `trusted` key, or {task.exam.agreeing_reviewers} "
            "reviewers who agree)"
        )
    return set_exam(task, store, exam, examples.calibration_gold(), backend, model_name)


def family_validation(task: TaskSpec, examples: Examples) -> tuple[list, list] | None:
    """The trusted gold of the calibration bucket, to choose the family on, when it holds
    `MIN_FAMILY_VALIDATION_ROWS`: a hold-out of the training rows would be scored against the label
    model's own labels, which favour the family most like it (n-gram stacking favours
    TF-IDF on sentiment, where MiniLM is better on true labels). None: the training
    rows' hold-out, as before."""
    gold = examples.calibration_gold()
    if len(gold) < MIN_FAMILY_VALIDATION_ROWS or len({g.label for g in gold}) < 2:
        return None
    return [g.text for g in gold], [g.label for g in gold]


def lora_inputs(task: TaskSpec, exam: Exam) -> dict:
    """What the `lora` family's job needs besides the data, when the task lists it: the
    task (prompt, label words) and the texts to answer (exam and calibration), since
    only the job can run its adapter; JSON, as a training job's input is."""
    if "lora" not in task.training.families:
        return {}
    calibration = exam.calibration.texts if exam.calibration else []
    return {
        "task_spec": task.model_dump(mode="json"),
        "answer_texts": [*exam.texts, *calibration],
    }


def reviews_only_model(
    task: TaskSpec, labeled: LabeledData, family: str, trainer: Trainer | None = None
) -> tuple[Candidate | None, str | None]:
    """(model, why not): `family` trained on the train bucket's gold alone (reviews and
    imported labels, no LFs, no FM): what the reviews would buy without the loop. Not
    for `lora`: it trains the FM, which only a training job loads (it is gated against
    the FM's own answers instead)."""
    if family == "lora" and trainer is None:
        return None, "the lora family trains in a training job, not beside the round"
    gold = labeled.train_gold()
    present = {g.label for g in gold}
    if len(present) < 2:
        return None, f"{len(gold)} reviewed training rows cover {len(present)} label(s)"
    data = TrainingSet.from_gold(task.label_names, [g.text for g in gold], [g.label for g in gold])
    spec = task.model_copy(
        update={"training": task.training.model_copy(update={"families": [family]})}
    )
    if trainer is not None:
        return trainer(spec, data), None
    # One family: nothing to choose between, so its own rows stand in for validation.
    validation = (data.texts, data.targets.argmax(axis=1))
    return train_specialist(task.name, data, spec.training, validation, progress=False), None


def fetch_champion(registry: Registry, task: TaskSpec) -> Champion | None:
    """The serving champion's folder, or why it could not be fetched."""
    version = registry.alias_version(task.name, CHAMPION)
    if version is None:
        return None
    try:
        return Champion(version, registry.download(task.name, version=version))
    except (RegistryError, OSError) as exc:
        log.warning("%s: champion version %s cannot be fetched: %s", task.name, version, exc)
        return Champion(version, None, f"champion version {version} cannot be fetched: {exc}")


def decide(
    task: TaskSpec,
    candidate: Candidate,
    folder: Path,
    judgement: Judgement,
    registry: Registry,
    *,
    lf_report: dict | None = None,
    label_model: dict | None = None,
    publish: Publish | None = None,
    judged_against: str | None = None,
) -> tuple[str, ModelEvent]:
    """Register the candidate with its judgement (and the LF report and label-model
    choice it was trained from), then promote or reject it. It is promoted only over
    the champion it was judged against (`judged_against`, "" for none; None: no
    check): when an
    operator moved the champion during the round, their decision stands and the
    candidate is rejected, saying so."""
    if judgement.calibration is not None:
        update_meta(folder, threshold=judgement.calibration.threshold)
    metrics = {
        **judgement.flat_metrics(),
        **{f"validation.{k}": v for k, v in candidate.validation_accuracy.items()},
        **{f"train_seconds.{k}": v for k, v in candidate.train_seconds.items()},
    }
    version = registry.log_candidate(
        task.name,
        folder,
        params=candidate.params,
        metrics=metrics,
        lf_report=lf_report,
        label_model=label_model,
        report={**judgement.report(task), "validation_accuracy": candidate.validation_accuracy},
    )
    event = None
    if judgement.decision.passed:
        try:
            event = registry.promote(
                task.name,
                version,
                reasons=judgement.reasons(),
                metrics=judgement.headline(),
                publish=publish,
                expected_champion=judged_against,
            )
        except ChampionMoved as exc:
            log.warning("%s: version %s not promoted: %s", task.name, version, exc)
            event = registry.reject(
                task.name,
                version,
                [*judgement.reasons(), f"not promoted: {exc}"],
                metrics=judgement.headline(),
                publish=publish,
            )
    if event is None:
        event = registry.reject(
            task.name, version, judgement.reasons(), metrics=judgement.headline(), publish=publish
        )
    log.info(
        "%s: version %s %s: %s", task.name, version, event.action.value, "; ".join(event.reasons)
    )
    return version, event


def record(
    store: ExampleStore,
    registry: Registry,
    task: TaskSpec,
    version: str,
    report: dict,
    round_report: RoundReport,
    exam: Exam,
) -> None:
    """Keep the LF report in the store, and the round's own facts (trigger, where the
    FM's answers came from, data counts) with the MLflow run."""
    run_id = registry.client.get_model_version(registry.registered_name(task.name), version).run_id
    store.save_report(
        task.name, "lf_report", {**report, "run_id": run_id, "version": version}, run_id=run_id
    )
    registry.client.log_dict(
        run_id,
        {
            "trigger": round_report.trigger,
            "foundation_answers": exam.foundation.summary(),
            "data": round_report.data,
            "outcome": round_report.outcome,
            "reasons": round_report.reasons,
        },
        "round.json",
    )


# --------------------------------------------------------------------------- the round


def run_round(
    task: TaskSpec,
    store: ExampleStore,
    registry: Registry,
    settings: Settings,
    *,
    trigger: str = "manual",
    publish: Publish | None = None,
    backend=None,
    use_ray: bool | None = None,
    trainer: Trainer | None = None,
    holder: str | None = None,
    sources: Sequence[str] = SOURCES,
    progress: bool = False,
) -> RoundReport:
    """One round for `task` under its lease: gather, label, set the exam, train, judge,
    decide (see module docstring).

    Never raises for a round that cannot or does not succeed: the outcome says
    `skipped` (not enough data) or `failed` (with the error), and the ledger records
    it. Raises TrainingInProgress when another round of the task holds the lease.
    `backend` defaults to the deployment's FM over HTTP, reached only if a text must be scored;
    `trainer` replaces the training step (tests)."""
    started = time.perf_counter()
    round_id = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # names its training job
    holder = holder or default_holder()
    ledger = RoundLedger.of(store)
    feedback, n_events = store.event_counts(task.name)
    if not ledger.acquire(
        task.name,
        holder,
        lease_s=settings.improver_lease_s,
        feedback=feedback,
        events=n_events,
        trigger=trigger,
    ):
        raise TrainingInProgress(
            f"{task.name}: another round holds the training lease "
            f"({ledger.state(task.name).holder})"
        )
    report = RoundReport(task.name, trigger, "failed")
    try:
        backend = backend if backend is not None else lazy_backend(settings)
        model_name = default_model_name()
        log.info(
            "%s: round started (%s; %d feedback, %d events stored)",
            task.name,
            trigger,
            feedback,
            n_events,
        )
        try:
            examples = gather(store, task)
            labeled = label(task, examples, store, backend, sources, model_name)
            report.label_model = (labeled.fit, tuple(sources))
            exam = exam_of(task, store, examples, backend, model_name)
            train = training_set(task, labeled)
        except NotReady as exc:
            report.outcome, report.reasons = "skipped", [str(exc)]
            log.info("%s: round skipped: %s", task.name, exc)
            return report
        report.foundation = exam.foundation.summary()
        report.data = {
            "examples": len(labeled.points),
            "train": len(train),
            "train_gold": int(train.gold.sum()),
            "exam": len(exam),
            "calibration": len(exam.calibration) if exam.calibration else 0,
            "feedback_events": feedback,
        }
        if trainer is None:
            use_ray = should_use_ray(task, settings) if use_ray is None else use_ray
            candidate = train_candidate(
                task,
                train,
                validation=family_validation(task, examples),
                use_ray=use_ray,
                settings=settings,
                metadata={"round": round_id, "trigger": trigger, "holder": holder},
                progress=progress,
                **lora_inputs(task, exam),
            )
        else:
            candidate = trainer(task, train)
        report.family = candidate.family
        baseline, why_not = reviews_only_model(task, labeled, candidate.family, trainer)
        lfs = lf_report(labeled)
        use = exam_use(store, task, exam.texts)
        with tempfile.TemporaryDirectory(prefix=f"protege-{task.name}-") as tmp:
            folder = candidate.write(Path(tmp) / "candidate")
            champion = fetch_champion(registry, task)
            judgement = judge(
                task,
                folder,
                exam,
                champion,
                reviews_only=baseline.write(Path(tmp) / "reviews-only") if baseline else None,
                reviews_only_problem=why_not,
                use=use,
                fm=backend,  # the deployment's FM over HTTP, for an fm-adapter champion
            )
            if ledger.state(task.name).holder != holder:
                raise LeaseLost(f"{task.name}: the round's lease is no longer {holder}'s")
            version, event = decide(
                task,
                candidate,
                folder,
                judgement,
                registry,
                lf_report=lfs,
                label_model=labeled.fit.summary(),
                publish=publish,
                judged_against=champion.version if champion else "",
            )
        record_decision(
            store, task, use, exam.texts, version=version, passed=judgement.decision.passed
        )
        report.judgement, report.version = judgement, version
        report.outcome, report.reasons = event.action.value, list(event.reasons)
        record(store, registry, task, version, lfs, report, exam)
        return report
    except Exception as exc:  # noqa: BLE001 - a failed round is recorded, never fatal
        report.outcome, report.reasons = "failed", [f"{type(exc).__name__}: {exc}"]
        log.error("%s: round failed\n%s", task.name, traceback.format_exc())
        return report
    finally:
        report.seconds = round(time.perf_counter() - started, 2)
        ledger.release(
            task.name,
            holder,
            outcome=report.outcome,
            version=report.version,
            detail="; ".join(report.reasons),
        )
        log.info(
            "%s: round %s in %.1f s: %s",
            task.name,
            report.outcome,
            report.seconds,
            "; ".join(report.reasons),
        )
